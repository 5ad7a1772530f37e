"""The ``langgraph`` resumer: continues a parked agent run from its LangGraph checkpoint.

When a model call of a LangGraph agent parks, the graph's checkpointer has saved every step
before it, and the failed model node is still pending. Invoking the graph with no input on the
same thread runs exactly what is pending: the model call is made again and the run goes on;
tools that already ran are not run again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.pregel import Pregel

if TYPE_CHECKING:
    from agentguard import Guard, ParkedSession

__all__ = ["GraphOrFactory", "register_langgraph_resumer"]

Graph = Pregel[Any, Any, Any, Any]
GraphOrFactory = Graph | Callable[[], Graph]
"""A compiled graph, or a function that builds one (called for each resume)."""


def register_langgraph_resumer(
    guard: Guard,
    graph: GraphOrFactory,
    *,
    name: str = "langgraph",
    invoke: Literal["auto", "invoke", "ainvoke"] = "auto",
) -> Callable[[ParkedSession], Any]:
    """Register the resumer that continues parked runs of ``graph`` on their thread.

    The resumer runs inside the parked session, restored (same id, budget and counters) by
    ``guard.parked.resume(id)`` or a :class:`~agentguard.scheduler.ResumeDaemon`, and calls
    ``graph.invoke(None, {"configurable": {"thread_id": ...}})`` with the thread id the
    :class:`~agentguard_langchain.AgentGuardMiddleware` kept in the record. If the limit is
    hit again, the session parks again (``attempts + 1``).

    Args:
        guard: the guard to register with.
        graph: the compiled agent, with a persistent checkpointer (``SqliteSaver``,
            ``PostgresSaver``) that a resuming process can read; or a function building it,
            called for each resume (a daemon can build the graph lazily; cache inside the
            function if building is costly).
        name: the resumer's name; the middleware's ``resumer`` names it too.
        invoke: ``"invoke"`` or ``"ainvoke"``; ``"auto"`` continues the way the run was
            started (an async checkpointer such as ``AsyncSqliteSaver`` only works with
            ``ainvoke``). An ``ainvoke`` resume runs in an event loop of its own, and async
            clients (the chat model's ``httpx.AsyncClient``, an ``aiosqlite`` connection)
            cannot be carried over from another loop: for async runs pass a factory that
            builds the graph for each resume.

    Returns:
        The resumer; it returns the graph's final state (a coroutine resolving to it for
        ``ainvoke``, which the guard awaits).

    Example::

        checkpointer = SqliteSaver(sqlite3.connect("threads.db", check_same_thread=False))
        agent = create_agent(model, tools, middleware=[AgentGuardMiddleware(guard)],
                             checkpointer=checkpointer)
        register_langgraph_resumer(guard, agent)
        ResumeDaemon(guard).start()
    """

    def resume(parked: ParkedSession) -> Any:
        thread_id = parked.metadata.get("thread_id")
        if not thread_id:
            raise ValueError(
                f"parked session {parked.session_id!r} has no LangGraph thread_id: the agent "
                "ran without a checkpointer, so there is no checkpoint to continue from"
            )
        target = graph if isinstance(graph, Pregel) else graph()
        config: RunnableConfig = {"configurable": {"thread_id": str(thread_id)}}
        how = parked.metadata.get("langgraph_invoke", "invoke") if invoke == "auto" else invoke
        if how == "ainvoke":
            return _continue_async(target, config)
        snapshot = target.get_state(config)
        if not snapshot.next:
            # Nothing pending: the thread was continued already (by hand); nothing to call.
            return snapshot.values
        return target.invoke(None, config)

    guard.resumer(name)(resume)
    return resume


async def _continue_async(graph: Graph, config: RunnableConfig) -> Any:
    snapshot = await graph.aget_state(config)
    if not snapshot.next:
        return snapshot.values
    return await graph.ainvoke(None, config)
