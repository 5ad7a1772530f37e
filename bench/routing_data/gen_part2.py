"""Hand-written agent steps, part 2: hard task classes."""

H = []


def add(cls, sys, user, tools=None, note=""):
    H.append({"c": cls, "sys": sys, "u": user, "t": tools, "n": note})


TB_RACE = """============================= test session starts ==============================
collected 311 items

tests/test_orders.py ..........F.......                                   [  6%]
...
=================================== FAILURES ===================================
___________________________ test_concurrent_checkout ___________________________

    def test_concurrent_checkout(db, client):
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: client.post('/checkout', json=CART), range(8)))
>       assert Stock.get('SKU-1').quantity == 2
E       AssertionError: assert -1 == 2

tests/test_orders.py:211: AssertionError
1 failed, 310 passed in 41.02s"""

TB_DEEP = """Traceback (most recent call last):
  File "/srv/worker/consumer.py", line 64, in handle
    result = pipeline.process(event)
  File "/srv/worker/pipeline.py", line 131, in process
    enriched = self.enricher.enrich(normalised)
  File "/srv/worker/enrich.py", line 58, in enrich
    geo = self.geo_cache[ip]
  File "/usr/lib/python3.12/functools.py", line 1001, in __getitem__
    return self._cache[key]
KeyError: '2001:db8::1'
During handling of the above exception, another exception occurred:
Traceback (most recent call last):
  File "/srv/worker/consumer.py", line 71, in handle
    self.dlq.put(event, reason=str(exc))
  File "/srv/worker/dlq.py", line 22, in put
    self.conn.execute(INSERT_DLQ, {...})
sqlalchemy.exc.OperationalError: (psycopg.OperationalError) server closed the connection unexpectedly"""

# ---------------------------------------------------------------- debugging (hard)
add(
    "debugging",
    "coding",
    "This test fails only when run with the others, never alone. Find out why and fix the underlying problem.",
    [("run_tests", {"path": "tests/"}, TB_RACE)],
)
add(
    "debugging",
    "coding",
    "Orders placed right around midnight sometimes show up on the wrong day in the daily report. Can you look into it?",
    note="plain phrasing",
)
add(
    "debugging",
    "ops",
    "The nightly import got about three times slower last week and nothing obvious changed. What happened?",
    [
        (
            "get_deploys",
            {"service": "importer", "limit": 5},
            '[{"id": 881, "version": "v1.9.3", "message": "bump pandas 2.1 -> 2.2"}, {"id": 880, "version": "v1.9.2", "message": "add region column to output"}, {"id": 875, "version": "v1.9.1", "message": "switch S3 client to async"}]',
        ),
        (
            "get_metrics",
            {"service": "importer", "window": "14d"},
            '{"duration_s": [612, 598, 640, 605, 1811, 1790, 1855, 1902], "rows": [1.2e6, 1.2e6, 1.3e6, 1.2e6, 1.25e6, 1.3e6, 1.3e6, 1.31e6], "db_cpu": [0.31, 0.3, 0.33, 0.32, 0.71, 0.69, 0.74, 0.77]}',
        ),
    ],
    note="plain phrasing",
)
add(
    "debugging",
    "coding",
    "The worker process's memory keeps growing until Kubernetes kills it, usually after about 6 hours. Here's the main loop. Figure out what's holding on to memory.",
    [
        (
            "read_file",
            {"path": "worker/loop.py"},
            "import asyncio\nfrom collections import defaultdict\n\n_seen = defaultdict(list)\n\nasync def run(queue, handler):\n    while True:\n        msg = await queue.get()\n        _seen[msg.tenant].append(msg.id)\n        task = asyncio.create_task(handler(msg))\n        task.add_done_callback(lambda t: queue.task_done())\n",
        )
    ],
)
add(
    "debugging",
    "ops",
    "Users on Safari can't log in since Tuesday's deploy. Chrome and Firefox are fine. Any idea?",
    [
        (
            "query_logs",
            {"query": "path:/login status:401", "since": "48h"},
            "2024-06-05T09:12:01Z web-2 POST /login 401 ua=Safari/17.4 cookie=absent\n2024-06-05T09:12:03Z web-2 POST /login 401 ua=Safari/17.4 cookie=absent\n2024-06-05T09:13:44Z web-1 POST /login 401 ua=Safari/17.5 cookie=absent",
        )
    ],
    note="plain phrasing",
)
add(
    "debugging",
    "coding",
    "Here's the failure from the consumer. It started after we enabled IPv6 on the load balancer. What's going on and what's the right fix?",
    [("query_logs", {"query": "service:worker level:error", "since": "2h"}, TB_DEEP)],
)
add(
    "debugging",
    "coding",
    "Our p99 latency doubled after upgrading SQLAlchemy from 1.4 to 2.0, even though the queries look the same. Find the cause.",
)
add(
    "debugging",
    "coding",
    "The CSV export produces garbled characters for some customers in Japan but not others. The code reads and writes with utf-8 everywhere, I checked. What could it be?",
    note="plain, no keywords",
)
add(
    "debugging",
    "coding",
    "Every few days the scheduler fires the same job twice. We run two replicas behind a leader election. Here's the election code — find the bug.",
    [
        (
            "read_file",
            {"path": "scheduler/leader.py"},
            "import time\n\nLEASE_S = 15\n\nclass Leader:\n    def __init__(self, store, me):\n        self.store, self.me = store, me\n\n    def is_leader(self) -> bool:\n        row = self.store.get('leader')\n        now = time.time()\n        if row is None or row['expires'] < now:\n            self.store.put('leader', {'owner': self.me, 'expires': now + LEASE_S})\n            return True\n        return row['owner'] == self.me\n",
        )
    ],
)
add(
    "debugging",
    "coding",
    "Why does this recursive function blow the stack for inputs above ~3000 but only on Windows?",
    [
        (
            "read_file",
            {"path": "tree.py"},
            "def depth(node):\n    if node is None:\n        return 0\n    return 1 + max(depth(c) for c in node.children)\n",
        )
    ],
)
add(
    "debugging",
    "ops",
    "Checkout error rate went from 0.1% to 4% at 14:05. Work out what caused it.",
    [
        (
            "get_deploys",
            {"service": "checkout", "since": "6h"},
            '[{"id": 9920, "time": "13:58", "service": "payments-gateway", "message": "rotate TLS certs"}, {"id": 9921, "time": "14:02", "service": "checkout", "message": "feature flag: new_tax_engine 10%"}]',
        ),
        (
            "query_logs",
            {"query": "service:checkout level:error", "since": "1h"},
            "14:05:11 checkout ERROR tax calculation timeout after 3000ms region=EU\n14:05:12 checkout ERROR tax calculation timeout after 3000ms region=EU\n14:06:40 checkout ERROR payment declined: upstream TLS handshake failed\n14:07:02 checkout ERROR tax calculation timeout after 3000ms region=EU",
        ),
    ],
)
add(
    "debugging",
    "coding",
    "The totals on invoices are off by a cent every now and then. Customers noticed. Can you track it down?",
    note="plain phrasing",
)
add(
    "debugging",
    "coding",
    "Hmm, the cache hit rate dropped to almost zero after the last release. Nothing in the cache code changed.",
    note="plain, no question",
)
add(
    "debugging",
    "coding",
    "The flaky test below fails about 1 in 20 runs in CI. I want the real cause, not a retry.",
    [
        (
            "read_file",
            {"path": "tests/test_notifications.py"},
            "def test_sends_digest(clock, mailer):\n    schedule_digest(user, at=clock.now() + timedelta(seconds=1))\n    time.sleep(1.05)\n    run_due_jobs()\n    assert mailer.sent == [('digest', user.email)]\n",
        )
    ],
)
add(
    "debugging",
    "coding",
    "After the Python 3.12 upgrade, a handful of our date parsing tests produce results one hour off. Only for Europe/Dublin. Explain and fix.",
)
add(
    "debugging",
    "coding",
    "Deadlock in production roughly once a week. Attached is the thread dump. Which locks are involved and how do we prevent it?",
    [
        (
            "read_file",
            {"path": "dumps/threads-2024-06-01.txt"},
            '"pool-1-thread-3" waiting to lock <0x000000076b5c8a10> (a com.acme.Inventory) held by "pool-1-thread-7"\n  at com.acme.Inventory.reserve(Inventory.java:88)\n  - locked <0x000000076b5c8b28> (a com.acme.Order)\n  at com.acme.OrderService.place(OrderService.java:142)\n"pool-1-thread-7" waiting to lock <0x000000076b5c8b28> (a com.acme.Order) held by "pool-1-thread-3"\n  at com.acme.Order.addLine(Order.java:51)\n  - locked <0x000000076b5c8a10> (a com.acme.Inventory)\n  at com.acme.Inventory.restock(Inventory.java:120)',
        )
    ],
)
add(
    "debugging",
    "coding",
    "I'm getting different results from the model every time even with the seed set. What's nondeterministic here?",
    [
        (
            "read_file",
            {"path": "train.py"},
            "import random, numpy as np, torch\n\ndef main(seed=0):\n    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)\n    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=4)\n    model = Net().cuda()\n    for x, y in loader:\n        loss = F.cross_entropy(model(x.cuda()), y.cuda())\n        loss.backward(); opt.step(); opt.zero_grad()\n",
        )
    ],
)
add(
    "debugging",
    "ops",
    "Pods restart with OOMKilled but the app reports using only 300MB of a 1GB limit. Look at the metrics and tell me what's eating the memory.",
    [
        (
            "get_metrics",
            {"pod": "api-7f9c", "window": "6h"},
            '{"container_memory_working_set_bytes": [6.1e8, 7.4e8, 8.9e8, 1.02e9], "process_resident_memory_bytes": [2.9e8, 3.0e8, 3.1e8, 3.0e8], "container_memory_cache": [2.9e8, 4.1e8, 5.6e8, 6.9e8], "open_files": [120, 5400, 11800, 17950]}',
        )
    ],
)
add(
    "debugging",
    "coding",
    "Search returns no results when the query contains an apostrophe, like O'Brien. Here's the handler.",
    [
        (
            "read_file",
            {"path": "search/handler.py"},
            "def search(q: str):\n    terms = ' & '.join(q.split())\n    sql = f\"SELECT id FROM people WHERE tsv @@ to_tsquery('english', '{terms}')\"\n    return db.execute(sql).fetchall()\n",
        )
    ],
    note="plain; also a security issue",
)
add(
    "debugging",
    "coding",
    "The integration test hangs forever on CI but passes locally. The last thing in the log is 'waiting for broker'.",
)
add(
    "debugging",
    "coding",
    "Two users editing the same document sometimes lose each other's changes. The save endpoint is below. What's wrong and how should it work?",
    [
        (
            "read_file",
            {"path": "docs/api.py"},
            "@app.put('/docs/{doc_id}')\ndef save(doc_id: int, body: DocIn, user=Depends(current_user)):\n    doc = db.get(Doc, doc_id)\n    doc.content = body.content\n    doc.updated_by = user.id\n    db.commit()\n    return {'ok': True}\n",
        )
    ],
)

# ---------------------------------------------------------------- multi_file_refactor (hard)
add(
    "multi_file_refactor",
    "coding",
    "Move all the date handling into one module; right now it's copy-pasted between the api, the background jobs and the CLI. Keep behaviour identical.",
    [
        (
            "grep",
            {"pattern": "strptime|strftime|tzinfo"},
            "api/orders.py:14:    d = datetime.strptime(s, '%Y-%m-%d').replace(tzinfo=UTC)\napi/reports.py:33:    return dt.astimezone(tz).strftime('%Y-%m-%d')\njobs/nightly.py:9:    start = datetime.strptime(arg, '%Y-%m-%d')\njobs/cleanup.py:41:    cutoff = (now - timedelta(days=30)).replace(tzinfo=None)\ncli/export.py:22:    since = datetime.strptime(since, '%d/%m/%Y')\ncli/export.py:57:    out.write(row.created.strftime('%Y-%m-%dT%H:%M'))\n",
        )
    ],
    note="plain phrasing",
)
add(
    "multi_file_refactor",
    "coding",
    "We need to support currencies other than USD. Right now amounts are floats in dollars all over the place. Change the money handling across the codebase.",
    note="plain phrasing",
)
add(
    "multi_file_refactor",
    "coding",
    "Replace our homegrown HTTP client wrapper with httpx everywhere it's used, including the retry behaviour and the tests that mock it.",
    [
        (
            "grep",
            {"pattern": "from app.http import"},
            "app/payments/stripe.py:3:from app.http import Client\napp/payments/paypal.py:2:from app.http import Client, HttpError\napp/notify/slack.py:1:from app.http import Client\napp/notify/email.py:4:from app.http import Client\napp/sync/crm.py:6:from app.http import Client, HttpError, RetryPolicy\ntests/conftest.py:12:from app.http import Client\ntests/test_payments.py:5:from app.http import HttpError\n",
        )
    ],
)
add(
    "multi_file_refactor",
    "coding",
    "Split `models.py` (2,400 lines) into a package with one module per domain area without breaking imports elsewhere.",
    [
        (
            "list_dir",
            {"path": "app"},
            "app/__init__.py\napp/models.py\napp/views.py\napp/serializers.py\napp/admin.py\napp/tasks.py\napp/signals.py\napp/management/commands/backfill.py\n",
        )
    ],
)
add(
    "multi_file_refactor",
    "coding",
    "Rename the `customer` concept to `account` throughout: database columns, API fields (keep the old field names working for one release), and the frontend.",
)
add(
    "multi_file_refactor",
    "coding",
    "Make the storage layer pluggable so we can use S3 or the local disk. Today `open()` and `os.path` calls are sprinkled across the upload, thumbnail and export code.",
    [
        (
            "grep",
            {"pattern": "open\\(|os.path"},
            "uploads/handler.py:22:    with open(os.path.join(UPLOAD_DIR, name), 'wb') as f:\nuploads/handler.py:40:    if os.path.exists(path):\nthumbs/make.py:11:    img = Image.open(os.path.join(UPLOAD_DIR, name))\nthumbs/make.py:30:    img.save(os.path.join(THUMB_DIR, name))\nexport/zip.py:18:    for root, _, files in os.walk(UPLOAD_DIR):\nexport/zip.py:21:            z.write(os.path.join(root, f))\n",
        )
    ],
)
add(
    "multi_file_refactor",
    "coding",
    "Convert the sync Flask views and the DB layer to async (Quart + asyncpg). Tell me what you'll change first, then start.",
)
add(
    "multi_file_refactor",
    "coding",
    "The config is read from env vars in 14 different places. Centralise it into one typed settings object and thread it through.",
    note="plain-ish",
)
add(
    "multi_file_refactor",
    "coding",
    "We have three near-identical pagination implementations (REST, GraphQL resolvers, admin). Unify them.",
    [
        (
            "read_file",
            {"path": "rest/paging.py"},
            "def paginate(q, page, size):\n    total = q.count()\n    items = q.offset((page - 1) * size).limit(size).all()\n    return {'items': items, 'total': total, 'page': page}\n",
        ),
        (
            "read_file",
            {"path": "graphql/paging.py"},
            "def connection(q, first, after):\n    if after:\n        q = q.filter(Model.id > decode_cursor(after))\n    rows = q.order_by(Model.id).limit(first + 1).all()\n    return Connection(rows[:first], has_next=len(rows) > first)\n",
        ),
        (
            "read_file",
            {"path": "admin/paging.py"},
            "def page_of(q, n, per=25):\n    return q.slice(n * per, (n + 1) * per).all(), q.count()\n",
        ),
    ],
)
add(
    "multi_file_refactor",
    "coding",
    "Drop Python 3.8 support: use the new typing syntax, remove the compat shims, and update CI and packaging.",
)
add(
    "multi_file_refactor",
    "coding",
    "Extract the notification sending (email, SMS, push) out of the order, signup and password-reset flows into a single service with a queue in front of it.",
)
add(
    "multi_file_refactor",
    "coding",
    "Replace the global `db` session with dependency injection in all the route handlers and the tests.",
    [
        (
            "grep",
            {"pattern": "from app.db import db"},
            "\n".join(
                f"app/routes/{n}.py:1:from app.db import db"
                for n in ["users", "orders", "items", "carts", "reviews", "admin", "auth", "search"]
            )
            + "\ntests/conftest.py:3:from app.db import db\n",
        )
    ],
)
add(
    "multi_file_refactor",
    "coding",
    "Our React app passes `user` down through 6 levels of props. Switch it to a context and clean up the components that only forwarded it.",
)
add(
    "multi_file_refactor",
    "coding",
    "Change the primary keys of orders and order_items from integer to UUID, including the migration, the foreign keys, the API and the fixtures.",
)
add(
    "multi_file_refactor",
    "coding",
    "Get rid of the circular import between `billing` and `accounts` properly, not by moving imports into functions.",
    [
        (
            "run_tests",
            {"cmd": "python -c 'import app'"},
            'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n  File "/repo/app/__init__.py", line 3, in <module>\n    from app.billing import invoices\n  File "/repo/app/billing/invoices.py", line 5, in <module>\n    from app.accounts.models import Account\n  File "/repo/app/accounts/models.py", line 9, in <module>\n    from app.billing.plans import Plan\nImportError: cannot import name \'Plan\' from partially initialized module \'app.billing.plans\'',
        )
    ],
)
add(
    "multi_file_refactor",
    "coding",
    "Introduce a repository layer between the services and the ORM for the orders domain; services should stop importing SQLAlchemy.",
)
add(
    "multi_file_refactor",
    "coding",
    "Migrate logging from print statements and the stdlib logger to structlog across the project, with request ids attached in the web handlers.",
)
add(
    "multi_file_refactor",
    "coding",
    "Port the feature-flag checks from our old `flags.is_on('x')` helper to the LaunchDarkly SDK in every service module, keeping a kill switch.",
    [
        (
            "grep",
            {"pattern": "flags.is_on"},
            "\n".join(
                f"services/{n}.py:{i * 7 + 3}:    if flags.is_on('{f}'):"
                for i, (n, f) in enumerate(
                    [
                        ("checkout", "new_tax"),
                        ("checkout", "fast_path"),
                        ("search", "semantic"),
                        ("profile", "avatars_v2"),
                        ("billing", "proration"),
                        ("billing", "annual_discount"),
                        ("email", "digest_v3"),
                    ]
                )
            ),
        )
    ],
)
add(
    "multi_file_refactor",
    "coding",
    "Make every public function in the sdk/ package keyword-only after the first argument and update the call sites.",
)
add(
    "multi_file_refactor",
    "coding",
    "The error handling is inconsistent: some modules raise ValueError, some return None, some return (ok, err) tuples. Define an error hierarchy and make the modules use it.",
)
add(
    "multi_file_refactor",
    "coding",
    "Swap moment.js for date-fns in the frontend. It's used in about 40 components.",
)

# ---------------------------------------------------------------- planning (hard)
add(
    "planning",
    "general",
    "We're launching in Germany in Q3. What do we need to get done, and in what order?",
    note="plain phrasing",
)
add(
    "planning",
    "coding",
    "Design a rate limiter for our public API that works across 6 stateless app servers. Compare at least two approaches and recommend one.",
)
add(
    "planning",
    "general",
    "Get our CI time under 5 minutes. It's 22 minutes now. Come up with a plan we can do over the next sprint.",
    [
        (
            "run_tests",
            {"cmd": "ci-report --last 20"},
            '{"median_total_s": 1320, "stages": {"install": 240, "lint": 95, "unit": 410, "integration": 480, "build_image": 95}, "parallelism": 1, "cache_hit_rate": 0.12}',
        )
    ],
)
add(
    "planning",
    "research",
    "I need to decide between Postgres, DynamoDB and Cassandra for a new event store: ~50k writes/s, mostly append, reads by aggregate id, 3 regions. Research and give me a recommendation with the trade-offs.",
)
add(
    "planning",
    "general",
    "Break down the work to move our monolith's user management into its own service, with milestones and risks.",
)
add(
    "planning",
    "coding",
    "How would you architect offline sync for our mobile app so edits made offline merge cleanly when the device reconnects?",
)
add(
    "planning",
    "general",
    "Our churn went up from 3% to 5% monthly. Put together an investigation plan: what data to look at, what hypotheses to test, in what order.",
)
add(
    "planning",
    "ops",
    "We need zero-downtime deploys for the Postgres schema changes. Outline a process the team can follow for every migration.",
)
add(
    "planning",
    "general",
    "Plan a two-day onsite for 30 engineers: agenda, goals, who should run what session.",
    note="planning, less technical",
)
add(
    "planning",
    "coding",
    "We want to let customers write their own automation scripts that run on our servers. How should we do it safely?",
    note="plain phrasing",
)
add(
    "planning",
    "general",
    "Write a migration strategy to move 200 TB from on-prem HDFS to S3 without stopping the nightly jobs.",
)
add(
    "planning",
    "research",
    "What would it take to get SOC 2 Type II in 9 months as a 25-person startup? Give me a month-by-month plan.",
    [
        (
            "web_search",
            {"query": "SOC 2 type II timeline startup"},
            "1. SOC 2 Type II requires an observation period, typically 3-12 months...\n2. Common controls: access reviews, change management, vendor management, incident response...\n3. Compliance automation tools can reduce preparation time...",
        )
    ],
)
add(
    "planning",
    "general",
    "I'm starting a small bakery. Walk me through everything I need to sort out before opening, step by step.",
)
add(
    "planning",
    "coding",
    "Propose how to version our public API going forward, given we have 300 integrations using v1 and we need breaking changes in the orders resource.",
)
add(
    "planning",
    "ops",
    "Design the on-call rotation and escalation policy for a team of 7 across two timezones, and the runbook structure.",
)
add(
    "planning",
    "general",
    "Think through whether we should build or buy a feature-flag system. We're 40 engineers.",
    note="plain phrasing",
)
add(
    "planning",
    "coding",
    "Sketch a data model and the main services for a multi-tenant appointment booking system with recurring bookings, waitlists and reminders.",
)
add(
    "planning",
    "research",
    "Compare the three vendor proposals you fetched and recommend one, considering cost over 3 years, lock-in and support.",
    [
        (
            "fetch_url",
            {"url": "https://vendor-a.example/proposal"},
            "Vendor A: $4,200/month, 3-year commit, 99.95% SLA, proprietary query language, migration assistance included, support 24/7 for enterprise tier only.",
        ),
        (
            "fetch_url",
            {"url": "https://vendor-b.example/proposal"},
            "Vendor B: usage-based ~ $3,100-5,800/month, no commit, 99.9% SLA, open-source core (Apache 2), community support + paid plan $900/month.",
        ),
        (
            "fetch_url",
            {"url": "https://vendor-c.example/proposal"},
            "Vendor C: $3,900/month, 1-year terms, 99.99% SLA, SQL compatible, data egress fees $0.09/GB, named TAM.",
        ),
    ],
)
add(
    "planning",
    "general",
    "How should we roll out the new pricing to existing customers without a revolt?",
    note="plain phrasing",
)
add(
    "planning",
    "coding",
    "We keep having incidents from config changes. Figure out a safer process and the tooling we'd need.",
)
add(
    "planning",
    "general",
    "Help me prioritise: I have 12 feature requests, 3 engineers and 6 weeks. Here they are — come up with a sequencing and explain the reasoning.\n1. SSO\n2. audit log\n3. CSV import\n4. dark mode\n5. API rate limits\n6. webhooks v2\n7. mobile push\n8. usage-based billing\n9. custom roles\n10. data residency EU\n11. Slack integration\n12. bulk edit",
)
add(
    "planning",
    "research",
    "Plan the experiment: we want to know if the new onboarding flow improves 30-day retention. Sample size, duration, metrics, pitfalls.",
)

# ---------------------------------------------------------------- math_proof (hard)
add("math_proof", "math", "Prove that the square root of 2 is irrational.")
add("math_proof", "math", "Show that for every positive integer n, n^3 - n is divisible by 6.")
add(
    "math_proof",
    "math",
    "How many ways are there to tile a 2×10 rectangle with 1×2 dominoes? Explain how you got it.",
    note="combinatorics, plain",
)
add(
    "math_proof",
    "math",
    "A bag has 3 red and 5 blue balls. You draw 3 without replacement. What's the probability that at least two are red? Show the working.",
)
add("math_proof", "math", "Find all real x with |x - 1| + |x + 2| = 5.")
add("math_proof", "math", "Is the series sum_{n=1}^∞ sin(n)/n convergent? Justify your answer.")
add(
    "math_proof",
    "math",
    "Derive the closed form of the expected number of coin flips until you see two heads in a row.",
)
add(
    "math_proof",
    "general",
    "If I put $400 a month into an account at 5% a year compounded monthly, how much will I have after 18 years, and how much of it is interest? Please show the calculation.",
    note="finance maths, plain",
)
add("math_proof", "math", "Prove that there are infinitely many primes of the form 4k + 3.")
add(
    "math_proof",
    "math",
    "Let f be continuous on [0,1] with f(0) = f(1). Show there exists c in [0, 1/2] with f(c) = f(c + 1/2).",
)
add(
    "math_proof",
    "math",
    "Our ranking function is score = log(1 + upvotes) / (age_hours + 2)^1.5. After how many hours does a post with 100 upvotes drop below a fresh post with 3 upvotes?",
    note="applied maths, plain",
)
add(
    "math_proof",
    "math",
    "What's the time complexity of this algorithm, and can it be done faster?\n\n```python\ndef count_pairs(a, k):\n    c = 0\n    for i in range(len(a)):\n        for j in range(i + 1, len(a)):\n            if (a[i] + a[j]) % k == 0:\n                c += 1\n    return c\n```",
)
add("math_proof", "math", "Solve the recurrence T(n) = 2T(n/2) + n log n.")
add(
    "math_proof",
    "math",
    "A 20-person team plays secret Santa. What is the probability that nobody draws themselves? Approximate and explain.",
)
add("math_proof", "math", "Prove that every tree with n vertices has exactly n - 1 edges.")
add(
    "math_proof",
    "math",
    "Find the eigenvalues and eigenvectors of [[2, 1], [1, 2]] and use them to compute A^10.",
)
add(
    "math_proof",
    "general",
    "Three friends split a bill. Ana paid twice what Ben paid, Ben paid $12 more than Cy, and the total was $148. What did each pay? Show your steps.",
    note="word problem",
)
add(
    "math_proof",
    "math",
    "We have 1000 servers each failing independently with probability 0.1% per day. What's the probability of 3 or more failures on a given day, and how many spares should we keep for 99.9% coverage?",
)
add("math_proof", "math", "Show that the halting problem is undecidable.")
add(
    "math_proof",
    "math",
    "Given a 6-sided die rolled repeatedly, what's the expected number of rolls to see all six faces?",
)
add("math_proof", "math", "Is 2^61 - 1 prime? How would you check it efficiently?")
add(
    "math_proof",
    "math",
    "Check my proof: 'Assume n^2 is even. Then n^2 = 2k, so n = sqrt(2k), which is even. QED.' Is it valid? If not, fix it.",
)
