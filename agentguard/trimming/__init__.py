"""Fitting an agent's growing context into a token budget without breaking the request.

The history is read as a *head* (the leading system/developer prompts and the first user
message, the task), then *turns*, each ending with an assistant message: a user message and the
assistant reply that follows it are one turn, and an assistant message with ``tool_calls`` is
never separated from its tool results. The last ``keep_last_turns`` turns are the *tail*.

The prompts, the task and the last message are always kept; the last user message and the tail
are kept whole when they can be. To make room, trimming degrades step by step, each step only
when the ones before it, taken as far as they go, cannot make the request fit:

1. elides old tool outputs longer than ``tool_output_max_tokens``, oldest first, only as far as
   needed: the output's first lines stay, followed by
   ``[agentguard: 1234 tokens of output from tool read_file elided]``;
2. drops the oldest whole turns and puts one note in their place;
3. elides the long tool outputs of the kept turns as well, oldest first, the newest turn's last
   (never the last message itself), because agent tails routinely hold several
   multi-thousand-token file reads and failing the call helps nobody;
4. keeps fewer turns, down to the group that holds the last message (an assistant message
   with ``tool_calls`` and its results, parallel calls included, stay together);
5. cuts the middle out of the largest message left, then the next largest, only as far as
   needed: its start and end stay around
   ``[agentguard: 1234 tokens cut from the middle of this message to fit the context window]``.
   The last message is the step's input, so it is cut only when cutting every other message
   cannot make room (and then first, so the system prompt and the task stay whole if they can).

:class:`~agentguard.ContextTooLarge` is raised only when even that cannot fit: the prompts, the
task and the last message, each cut down to its marker, with everything else dropped (the last
user message and the note go last). Its message gives the sizes.

The note is a **user** message. Every OpenAI-compatible server accepts a user message at a turn
boundary, after the system prompt and after tool results, whereas a ``system`` message in the
middle of a conversation is rejected by several compatible servers' chat templates, and on
reasoning models carries developer authority a bookkeeping note should not have. The note sits
where the dropped turns were, so it never lands between a tool call and its results.

:func:`trim_messages` is the pure, one-shot version. :class:`Trimmer` keeps a session's context
*cache-stable*: when a request exceeds the budget it trims down to ``low_watermark`` of it, then
re-applies the very same cut (same elisions, same dropped span, same note, byte for byte) to the
following, longer requests while they fit, so consecutive requests share their prefix and the
provider's prompt cache stays warm. The cut lives in a small :class:`TrimState`, which is stored
with the session.

Every wire API is trimmed by this one planner. It reads a history only through a
:class:`HistoryView` (:mod:`agentguard.trimming.view`), which each dialect brings: chat
messages (:class:`ChatView`), the Responses API's ``input`` items with ``instructions`` as the
prompt, Anthropic's messages with each ``tool_result`` block as an entry of its own. "Message"
above means such an entry; the view says which entries are prompts, the task, replies and tool
outputs, which belong together, how each is counted, and how the trimmed entries go back
into the request body.
"""

from agentguard.trimming.chat import NOTE_ROLE, ChatView, validate_messages
from agentguard.trimming.trimmer import Summarizer, Trimmer, TrimResult, TrimState, trim_messages
from agentguard.trimming.view import HistoryView

__all__ = [
    "NOTE_ROLE",
    "ChatView",
    "HistoryView",
    "Summarizer",
    "TrimResult",
    "TrimState",
    "Trimmer",
    "trim_messages",
    "validate_messages",
]
