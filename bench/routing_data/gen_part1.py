"""Hand-written agent steps, part 1: easy task classes."""

E = []  # (task_class, system_key, user_text, tool_exchange or None, note)


def add(cls, sys, user, tools=None, note=""):
    E.append({"c": cls, "sys": sys, "u": user, "t": tools, "n": note})


# ---------------------------------------------------------------- classification (easy)
add(
    "classification",
    "data",
    'Classify the sentiment of this review as positive, negative or neutral. Reply with one word.\n\nReview: "Arrived two days late but the blender itself is great, crushes ice easily."',
)
add(
    "classification",
    "support",
    'Route this ticket to one of: billing, bug, feature_request, account. Answer with the queue name only.\n\nTicket: "The app crashed with a segfault and showed a stack trace when I opened Settings > Notifications on Android 14."',
    note="scary words: segfault, stack trace",
)
add(
    "classification",
    "data",
    "Is this email spam? yes/no\n\nSubject: You've WON a $500 gift card!!! Click within 24h to claim",
)
add(
    "classification",
    "data",
    "Label each line with its language code (en, de, fr, es). Output as `line_number: code`.\n1. Wo ist der Bahnhof?\n2. Where is the station?\n3. ¿Dónde está la estación?\n4. Où est la gare ?",
)
add(
    "classification",
    "support",
    'Which product is this customer talking about: Starter, Pro or Enterprise? "We have 40 seats and SSO through Okta, and our legal team needs the custom DPA."',
)
add(
    "classification",
    "data",
    "Tag this GitHub issue with exactly one label from [bug, docs, question, enhancement]:\n\nTitle: Refactor the architecture section of the README\nBody: The architecture overview in the README still describes the old design with the monolith. It should describe the current services.",
    note="scary words: refactor, architecture, design",
)
add(
    "classification",
    "data",
    'Classify the urgency (low/medium/high) of this alert text: "Disk usage on db-replica-3 at 71%, growth 0.4%/day"',
)
add(
    "classification",
    "coding",
    "Look at the test output and tell me whether the CI run passed or failed. Just say PASSED or FAILED.",
    [
        (
            "run_tests",
            {"path": "tests/"},
            "============================= test session starts ==============================\nplatform linux -- Python 3.12.3, pytest-8.2.0\ncollected 214 items\n\ntests/test_api.py ........................................           [ 18%]\ntests/test_models.py ..................................................[ 41%]\ntests/test_jobs.py .....................................................[ 66%]\ntests/test_cli.py ........................................................[ 92%]\ntests/test_utils.py ................                                   [100%]\n\n============================= 214 passed in 12.31s =============================",
        )
    ],
    note="tool output digest",
)
add(
    "classification",
    "data",
    'Does this sentence contain personal data (name, email, phone, address)? Answer true or false.\n\n"Please ship the replacement to Maria Gonzalez at 14 Elm Street, Springfield."',
)
add(
    "classification",
    "support",
    'Customer message: "hi, how do I prove I\'m the account owner? I lost access to my 2FA device". Is this a security/account-recovery request? yes or no.',
    note="scary word: prove",
)
add(
    "classification",
    "data",
    "Categorize these expenses into Travel, Meals, Software or Other and return JSON {description: category}:\n- Uber to airport\n- Figma annual\n- Team lunch at Nando's\n- Printer toner",
)
add(
    "classification",
    "data",
    'Which of these log lines are errors? Return the line numbers.\n1 INFO  server started on :8080\n2 WARN  slow query 1203ms\n3 ERROR failed to connect to redis: connection refused\n4 INFO  GET /health 200\n5 ERROR Traceback (most recent call last): File "app.py", line 88, in handle\n6 INFO  shutting down',
)
add(
    "classification",
    "coding",
    'Is this PR title conventional-commit compliant? "feat(parser): support nested arrays in TOML loader". Reply yes or no and the type.',
)
add(
    "classification",
    "data",
    'Rate the toxicity of the following comment on a 1-5 scale, number only: "This is the third time the build broke because someone didn\'t run the tests. Please run them."',
)
add(
    "classification",
    "support",
    "Based on the order details, is this order eligible for a refund under our 30-day policy? Answer eligible / not eligible.",
    [
        (
            "lookup_order",
            {"order_id": "A-88213"},
            '{"order_id": "A-88213", "status": "delivered", "delivered_at": "2024-05-02", "today": "2024-05-19", "items": [{"sku": "KB-01", "name": "Mechanical keyboard", "price": 89.0}], "returns": []}',
        )
    ],
)
add(
    "classification",
    "data",
    'Intent detection. Options: cancel_subscription, upgrade, downgrade, pause, other.\nUtterance: "can we go down to the cheaper plan for the summer and come back in september"',
    note="scary word: plan",
)
add(
    "classification",
    "data",
    'Is the following a question about mathematics, physics or chemistry? One word.\n"Why does the integral of 1/x give ln|x| and not ln x?"',
    note="scary words: why does, integral",
)
add(
    "classification",
    "ops",
    "Here's the latest deploy record. Was it a rollback? yes/no",
    [
        (
            "get_deploys",
            {"service": "checkout", "limit": 1},
            '[{"id": 9912, "service": "checkout", "version": "v2.41.0", "previous": "v2.42.1", "author": "ci-bot", "trigger": "manual", "message": "Revert to v2.41.0 after elevated 5xx"}]',
        )
    ],
)
add(
    "classification",
    "data",
    'Pick the department for this job posting: Engineering, Sales, Marketing, Operations.\n"We\'re hiring a Senior Backend Engineer to design distributed systems, debug production issues and plan the migration of our architecture to event sourcing."',
    note="scary words: design, debug, plan, architecture",
)
add(
    "classification",
    "data",
    "Classify each commit message as fix, feature or chore:\n- bump lodash to 4.17.21\n- add dark mode toggle\n- handle null user in profile page\n- update CI node version",
)
add(
    "classification",
    "support",
    'Is the customer asking about a delivery delay? Answer Y or N.\n"I ordered on Monday and tracking still says label created. It\'s Friday."',
)
add(
    "classification",
    "data",
    'Given the schema fields [invoice, receipt, contract, other], what type of document is this? "This Agreement is entered into as of March 1, 2024 by and between Northwind LLC and..."',
)

# ---------------------------------------------------------------- extraction (easy)
add(
    "extraction",
    "data",
    "Extract the invoice number, date and total from this text as JSON with keys invoice_number, date, total.\n\nINVOICE #INV-20931\nDate: 12 March 2024\nBill to: Contoso Ltd\nWidgets x 40 ........ $1,200.00\nShipping ............ $45.00\nTotal due: $1,245.00",
)
add(
    "extraction",
    "coding",
    'From this traceback, what\'s the exception type and the file and line where it was raised? Just those three things.\n\nTraceback (most recent call last):\n  File "/srv/app/main.py", line 41, in <module>\n    run()\n  File "/srv/app/runner.py", line 118, in run\n    cfg = load_config(path)\n  File "/srv/app/config.py", line 22, in load_config\n    return json.loads(text)\njson.decoder.JSONDecodeError: Expecting \',\' delimiter: line 3 column 5 (char 31)',
    note="scary: full stack trace, but only extraction",
)
add(
    "extraction",
    "data",
    "Pull out every email address in this thread, one per line.\n\nFrom: ana@northwind.io\nTo: dev-team@northwind.io, sam.k@contoso.com\nCc: legal@northwind.io\n> On Tue, j.smith@fabrikam.com wrote:\n> Thanks, looping in ops@fabrikam.com",
)
add(
    "extraction",
    "coding",
    "List the names of the functions that this diff changes.\n\n```diff\n--- a/billing/invoice.py\n+++ b/billing/invoice.py\n@@ -40,7 +40,7 @@ def compute_tax(amount, region):\n-    rate = RATES.get(region, 0)\n+    rate = RATES.get(region, DEFAULT_RATE)\n@@ -88,6 +88,9 @@ def render_invoice(invoice):\n+    if invoice.currency != 'USD':\n+        header += f' ({invoice.currency})'\n```",
    note="scary: diff, code fence",
)
add(
    "extraction",
    "data",
    'What are the start and end dates of the contract? Reply in ISO format.\n\n"This agreement shall commence on the first day of February 2024 and remain in force until January 31st, 2026, unless terminated earlier."',
)
add(
    "extraction",
    "research",
    "What is the release date of version 3.0 according to this page?",
    [
        (
            "fetch_url",
            {"url": "https://example.org/changelog"},
            "Changelog\n\n## 3.1.2 — 2024-06-14\n- Fix crash on empty config\n\n## 3.1.0 — 2024-05-02\n- Add plugin hooks\n\n## 3.0.0 — 2024-03-18\n- New storage engine\n- Drop Python 3.8\n\n## 2.9.4 — 2024-01-09\n- Security fix for CVE-2023-49083",
        )
    ],
)
add(
    "extraction",
    "data",
    "Extract the product name, quantity and unit price from each line into a CSV with header name,qty,unit_price.\n3 x Blue mug @ 7.50\n1 x Tea towel @ 4.00\n12 x Coaster @ 1.25",
)
add(
    "extraction",
    "ops",
    "Which hosts are reporting errors in these logs? Just give me the hostnames.",
    [
        (
            "query_logs",
            {"query": "level:error", "since": "1h"},
            "2024-06-02T10:01:12Z web-1 ERROR upstream timeout /api/cart\n2024-06-02T10:01:15Z web-4 ERROR upstream timeout /api/cart\n2024-06-02T10:03:40Z worker-2 ERROR job 8812 failed: KeyError 'sku'\n2024-06-02T10:05:02Z web-1 ERROR upstream timeout /api/cart\n2024-06-02T10:09:55Z db-proxy ERROR too many connections",
        )
    ],
)
add(
    "extraction",
    "data",
    'Get the phone number and opening hours from this blurb.\n"Visit Luigi\'s Trattoria at 22 Harbour Rd. Call us on (02) 9555 0199. Open Tue–Sun 5pm–10pm, closed Mondays."',
)
add(
    "extraction",
    "coding",
    "What version of requests does this project pin?",
    [
        (
            "read_file",
            {"path": "requirements.txt"},
            "fastapi==0.110.0\nuvicorn[standard]==0.29.0\nrequests==2.31.0\npydantic>=2.6,<3\nsqlalchemy==2.0.29\nalembic==1.13.1\n",
        )
    ],
)
add(
    "extraction",
    "data",
    "From the meeting notes below, list the action items with their owners.\n\nNotes 14 May: discussed Q3 roadmap and architecture review. Priya to send the vendor comparison by Friday. Tom will set up the staging cluster. We agreed to postpone the redesign. Lee to book the offsite venue.",
    note="scary: roadmap, architecture, redesign",
)
add(
    "extraction",
    "data",
    'Extract all the dates mentioned and normalise them to YYYY-MM-DD: "We met on 3/4/2024 (US format), followed up on April 18, 2024 and plan to sign by 2024-05-01."',
)
add(
    "extraction",
    "research",
    "Find the population figure in this article and give it as a number.",
    [
        (
            "fetch_url",
            {"url": "https://example.org/city"},
            "Springfield is a mid-sized city in the state's north. According to the 2020 census, it had a population of 169,176, up from 164,122 in 2010. The city is known for its rail museum and the annual lantern festival. Its economy is driven by healthcare, logistics and a growing software sector.",
        )
    ],
)
add(
    "extraction",
    "data",
    "Give me the SKU codes from this packing list, comma separated.\nBOX 1: SKU-4411 (x2), SKU-4412 (x1)\nBOX 2: SKU-9001 (x5)\nBOX 3: SKU-4411 (x1), SKU-7730 (x3)",
)
add(
    "extraction",
    "coding",
    "What's the name of the environment variable this module reads for the database URL?",
    [
        (
            "read_file",
            {"path": "app/settings.py"},
            'import os\nfrom functools import lru_cache\n\n\nclass Settings:\n    def __init__(self) -> None:\n        self.database_url = os.environ.get("APP_DATABASE_URL", "sqlite:///./dev.db")\n        self.redis_url = os.environ.get("APP_REDIS_URL", "redis://localhost:6379/0")\n        self.debug = os.environ.get("APP_DEBUG", "0") == "1"\n\n\n@lru_cache\ndef get_settings() -> Settings:\n    return Settings()\n',
        )
    ],
)
add(
    "extraction",
    "data",
    "Extract the key-value pairs from this HTTP response header block into JSON.\n\nHTTP/1.1 429 Too Many Requests\nretry-after: 20\nx-ratelimit-limit-requests: 500\nx-ratelimit-remaining-requests: 0\nx-ratelimit-reset-requests: 20s\ncontent-type: application/json",
)
add(
    "extraction",
    "support",
    "What's the tracking number on this order?",
    [
        (
            "lookup_order",
            {"order_id": "B-1020"},
            '{"order_id": "B-1020", "status": "shipped", "carrier": "UPS", "tracking": "1Z999AA10123456784", "shipped_at": "2024-06-01"}',
        )
    ],
)
add(
    "extraction",
    "data",
    'From this CV snippet, extract years of experience and the programming languages mentioned.\n"Software engineer with 7 years of experience building backend services in Go and Python; previously wrote embedded C for 2 years. Comfortable debugging production systems and designing APIs."',
    note="scary: debugging, designing",
)
add(
    "extraction",
    "data",
    "Return the name of the author and the year from this citation: Lamport, L. (1978). Time, clocks, and the ordering of events in a distributed system. CACM 21(7).",
)
add(
    "extraction",
    "data",
    "Please extract the total amount due from the statement below.\n\n"
    + "\n".join(
        f"{d:02d}/05  CARD PURCHASE  MERCHANT {m}  {a:.2f}"
        for d, m, a in [
            (1, "GROCER", 54.2),
            (2, "FUEL", 61.0),
            (3, "PHARMACY", 12.4),
            (5, "BOOKSHOP", 23.99),
            (7, "GROCER", 48.75),
            (8, "STREAMING", 15.99),
            (10, "CAFE", 4.5),
            (11, "HARDWARE", 88.1),
            (14, "GROCER", 71.3),
            (15, "AIRLINE", 412.0),
            (18, "HOTEL", 289.0),
            (20, "GROCER", 39.9),
            (22, "CINEMA", 28.0),
            (25, "FUEL", 58.4),
            (27, "GROCER", 66.05),
            (29, "ELECTRICITY", 121.35),
        ]
    )
    + "\n\nPrevious balance 0.00\nPayments 0.00\nNew purchases 1400.93\nTOTAL AMOUNT DUE 1400.93\nMinimum payment 35.00",
    note="longish input, easy",
)
add(
    "extraction",
    "coding",
    "Which port does the service listen on according to the compose file?",
    [
        (
            "read_file",
            {"path": "docker-compose.yml"},
            'services:\n  api:\n    build: .\n    ports:\n      - "8081:8000"\n    environment:\n      - APP_ENV=dev\n  db:\n    image: postgres:16\n    ports:\n      - "5432:5432"\n',
        )
    ],
)

# ---------------------------------------------------------------- faq (easy)
add("faq", "support", "How do I reset my password?")
add(
    "faq",
    "support",
    "Can I change my plan in the middle of a billing cycle? Will I be charged twice?",
    note="scary: plan",
)
add(
    "faq",
    "support",
    "What's your refund policy?",
    [
        (
            "search_kb",
            {"query": "refund policy"},
            '[{"title": "Refunds", "text": "You can request a full refund within 30 days of delivery. Items must be unused. Refunds are issued to the original payment method within 5-7 business days."}]',
        )
    ],
)
add("faq", "general", "What time zone is UTC+10 in Australia called?")
add(
    "faq",
    "support",
    "Do you ship to Canada, and how long does it take?",
    [
        (
            "search_kb",
            {"query": "shipping canada"},
            '[{"title": "International shipping", "text": "We ship to Canada, the UK and the EU. Canada: 5-8 business days, flat rate $12. Duties are prepaid at checkout."}]',
        )
    ],
)
add("faq", "general", "What's 15% of 80?", note="arithmetic, trivial")
add("faq", "coding", "What does `git stash pop` do, in one line?")
add(
    "faq",
    "support",
    "Does the Pro plan include the design templates and the API?",
    note="scary: design, plan",
)
add("faq", "general", "How many tablespoons are in a cup?")
add(
    "faq",
    "support",
    "Is there a student discount?",
    [
        (
            "search_kb",
            {"query": "student discount"},
            '[{"title": "Discounts", "text": "Students and educators get 50% off Pro with a valid .edu address. Apply from Settings > Billing > Education."}]',
        )
    ],
)
add("faq", "coding", "What's the default port for PostgreSQL?")
add(
    "faq",
    "general",
    "Why does my phone say 'SIM not provisioned'? Short answer please.",
    note="scary: why does",
)
add("faq", "support", "Where can I download my invoices?")
add(
    "faq",
    "coding",
    "In Python, what's the difference between a list and a tuple? Keep it to two sentences.",
)
add("faq", "general", "What's the capital of New Zealand?")
add(
    "faq",
    "support",
    "How do I add a teammate to my workspace?",
    [
        (
            "search_kb",
            {"query": "invite teammate"},
            '[{"title": "Inviting people", "text": "Admins can invite teammates from Settings > Members > Invite. Enter their email; they get a link valid for 7 days. Seats are billed pro rata."}]',
        )
    ],
)
add("faq", "general", "Is a tomato a fruit or a vegetable?")
add("faq", "coding", "What HTTP status code means 'too many requests'?")
add("faq", "support", "Can I pause my subscription instead of cancelling?")
add("faq", "general", "How do you say 'thank you' in Japanese?")
add("faq", "ops", "What's the command to see which process is listening on port 8080 on Linux?")
add(
    "faq",
    "support",
    "What are your support hours?",
    [
        (
            "search_kb",
            {"query": "support hours"},
            '[{"title": "Contact", "text": "Chat support: Mon-Fri 8am-8pm ET. Email: 24/7, reply within one business day. Enterprise customers have a 24/7 phone line."}]',
        )
    ],
)

# ---------------------------------------------------------------- formatting (easy)
add(
    "formatting",
    "data",
    "Convert this to a markdown table with columns Name, Role, Start date:\nAlice Chen - Staff Engineer - 2021-03-01\nBob Okafor - Designer - 2022-07-15\nCarla Ruiz - PM - 2020-11-30",
)
add(
    "formatting",
    "data",
    'Turn this JSON into YAML.\n{"server": {"port": 8080, "host": "0.0.0.0"}, "features": ["auth", "billing"], "debug": false}',
)
add(
    "formatting",
    "general",
    'Translate into Spanish: "Your order has shipped and should arrive within three business days."',
)
add(
    "formatting",
    "coding",
    "Reformat this SQL so keywords are uppercase and each clause is on its own line:\nselect id, name from users where created_at > '2024-01-01' and status = 'active' order by name limit 50",
)
add(
    "formatting",
    "data",
    "Rewrite these bullet points as one polite paragraph for an email:\n- meeting moved to thu 3pm\n- bring the Q2 numbers\n- room 4B",
)
add(
    "formatting",
    "data",
    "Convert these temperatures from Fahrenheit to Celsius, rounded to one decimal: 32, 68, 98.6, 451",
)
add(
    "formatting",
    "coding",
    "Convert this Python dict literal to valid JSON (double quotes, no trailing commas, True->true):\n{'name': 'svc', 'replicas': 3, 'enabled': True, 'tags': ['a', 'b',],}",
)
add(
    "formatting",
    "general",
    'Translate this error message into French for our UI strings file: "Segmentation fault (core dumped). The application will now restart."',
    note="scary: segfault",
)
add(
    "formatting",
    "data",
    "Sort these names alphabetically by last name: Grace Hopper, Alan Turing, Ada Lovelace, Edsger Dijkstra, Barbara Liskov",
)
add(
    "formatting",
    "coding",
    "Format this as a conventional commit message: fixed the bug where the refactor of the payment module broke coupon codes",
    note="scary: bug, refactor",
)
add(
    "formatting",
    "data",
    "Render this LaTeX as plain Unicode text: $\\forall x \\in \\mathbb{R}, x^2 \\geq 0$ and $\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}$",
    note="scary: maths notation",
)
add(
    "formatting",
    "data",
    'Make this title case: "a practical guide to debugging distributed systems"',
    note="scary: debugging distributed systems",
)
add(
    "formatting",
    "coding",
    "Turn this curl command into a Python requests call:\ncurl -X POST https://api.example.com/v1/items -H 'Authorization: Bearer $TOKEN' -H 'Content-Type: application/json' -d '{\"name\": \"widget\", \"qty\": 3}'",
)
add("formatting", "data", "Convert these durations to seconds: 1h 30m, 45m, 2h 5m 10s, 90s")
add(
    "formatting",
    "general",
    "Put this address into the standard US envelope format:\njohn doe, apt 4, 221 b baker st, boston ma 02116",
)
add(
    "formatting",
    "data",
    "Change the date format in this CSV from DD/MM/YYYY to YYYY-MM-DD and return the CSV.\nid,date,amount\n1,03/02/2024,19.99\n2,28/02/2024,5.00\n3,11/03/2024,120.50",
)
add(
    "formatting",
    "general",
    "Rewrite this sentence to be more formal: \"hey, we can't make the deadline, stuff broke and we're fixing it\"",
)
add(
    "formatting",
    "coding",
    "Indent this YAML correctly, it fails to parse:\n```yaml\njobs:\n build:\n   runs-on: ubuntu-latest\n  steps:\n   - uses: actions/checkout@v4\n```",
    note="code fence",
)
add(
    "formatting",
    "data",
    "Here is a list of tags; dedupe them and make them lowercase-kebab-case: Machine Learning, machine-learning, API Design, api design, DevOps, Dev Ops",
    note="scary: design",
)
add(
    "formatting",
    "data",
    "Format these phone numbers in E.164 assuming US numbers: (415) 555-0132, 212.555.0199, 1-800-555-0100",
)
add(
    "formatting",
    "general",
    'Translate to German, keep it short: "Prove you\'re human by ticking the box."',
    note="scary: prove",
)
add(
    "formatting",
    "coding",
    "Write a one-line docstring for this function:\n\ndef slugify(title: str) -> str:\n    return re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')",
)

# ---------------------------------------------------------------- short_summary (easy)
add(
    "short_summary",
    "data",
    'Summarise in one sentence:\n\n"The quarterly all-hands is moving from the main auditorium to the cafeteria because of the renovation. It will still start at 10am on Thursday. Remote staff can join via the usual link. Lunch will be provided afterwards."',
)
add(
    "short_summary",
    "coding",
    'Summarise this bug report in one line for the changelog:\n\n"When a user with a very long display name (over 64 chars) opens the profile page, the header overflows and the logout button is hidden behind the avatar. Happens on mobile Safari and Chrome. Workaround is rotating the phone. Stack trace not applicable, purely CSS."',
    note="scary: bug, stack trace",
)
add(
    "short_summary",
    "support",
    "Give me a two-sentence summary of this customer's complaint for the handover note.\n\n\"I've been charged twice for my May subscription. I contacted you last week and was told it would be fixed in 3 days but nothing happened. I'd like a refund of the duplicate charge and an apology honestly.\"",
)
add(
    "short_summary",
    "research",
    "TL;DR of this abstract in plain words?",
    [
        (
            "fetch_url",
            {"url": "https://example.org/paper"},
            "Abstract. We study the effect of batch size on the generalisation of small convolutional networks trained on CIFAR-10. Across 240 runs, larger batches reached similar training loss but lower test accuracy unless the learning rate was scaled linearly with the batch size. With linear scaling and a short warm-up, the gap closed for batches up to 2048. We release our code and training logs.",
        )
    ],
)
add(
    "short_summary",
    "data",
    "Summarise these release notes as 3 bullets:\n\n- Added CSV export on the reports page\n- Fixed a crash when the timezone was unset\n- Improved load time of the dashboard by caching queries\n- Updated dependencies\n- Fixed typo on the pricing page\n- Added keyboard shortcut for search (/)",
)
add(
    "short_summary",
    "ops",
    "Summarise what happened in this incident timeline in two sentences.\n\n09:02 alert: p95 latency checkout > 2s\n09:05 on-call acks\n09:11 identified slow query after index drop in migration 0042\n09:19 index re-created\n09:21 latency back to normal\n09:40 incident closed",
    note="scary-ish: incident, migration",
)
add(
    "short_summary",
    "general",
    'Summarise this text message from my landlord in a few words: "Hi, the plumber will come Wednesday between 9 and 12 to look at the leaking tap, please make sure someone is home or leave the key with the neighbour. Thanks."',
)
add(
    "short_summary",
    "coding",
    "What does this PR do, in one sentence?",
    [
        (
            "read_file",
            {"path": "PR_DESCRIPTION.md"},
            "## Summary\nThis PR adds retry with exponential backoff to the webhook sender. Previously a single 5xx from the receiver dropped the event. Now we retry up to 5 times with jitter, and move the event to a dead-letter table after that.\n\n## Testing\nUnit tests for the backoff schedule; manual test against a flaky endpoint.",
        )
    ],
)
add(
    "short_summary",
    "data",
    'One-line summary of this review: "Battery life is shockingly good, easily two days. The camera is fine in daylight but noisy at night. Screen is bright. Wish it had a headphone jack."',
)
add(
    "short_summary",
    "support",
    "Summarise the conversation so far for the next agent in one or two lines.\n\nCustomer: my export keeps failing\nAgent: which format?\nCustomer: xlsx, csv works fine\nAgent: how many rows?\nCustomer: around 300k\nAgent: xlsx has a limit of ~1M rows, should be ok, let me check\nCustomer: ok",
)
add(
    "short_summary",
    "data",
    'Give a short summary (max 20 words) of this paragraph:\n"The proposed architecture splits the monolith into three services — accounts, billing and catalog — connected through an event bus. Each service owns its database. The migration would happen over two quarters."',
    note="scary: architecture, migration",
)
add(
    "short_summary",
    "research",
    "In one sentence, what is this page about?",
    [
        (
            "fetch_url",
            {"url": "https://example.org/about"},
            "About us. Greenfield Co-op is a member-owned grocery in Portland founded in 1974. We source from over 120 local farms, run a weekly farmers' market in the car park and offer cooking classes for members. Membership is $25 a year and comes with a 5% discount.",
        )
    ],
)
add(
    "short_summary",
    "general",
    'Summarise: "Due to scheduled maintenance, the online banking service will be unavailable from 1am to 4am on Sunday. Card payments and ATMs are not affected."',
)
add(
    "short_summary",
    "coding",
    "Write a one-line summary of what this function does.",
    [
        (
            "read_file",
            {"path": "utils/retry.py"},
            "def retry(fn, attempts=3, delay=0.5):\n    last = None\n    for i in range(attempts):\n        try:\n            return fn()\n        except Exception as exc:  # noqa: BLE001\n            last = exc\n            time.sleep(delay * (2 ** i))\n    raise last\n",
        )
    ],
)
add(
    "short_summary",
    "data",
    'Condense into a tweet (<280 chars): "We are excited to announce that our annual developer conference will take place in Lisbon on October 14-16. Early-bird tickets are available until July 31 at a 30% discount. This year\'s themes are reliability, developer experience and AI tooling."',
)
add(
    "short_summary",
    "support",
    "Summarise the customer's order history in one sentence.",
    [
        (
            "lookup_order",
            {"customer_id": "C-771"},
            '[{"order_id": "A-1", "date": "2023-11-02", "total": 42.0, "status": "delivered"}, {"order_id": "A-2", "date": "2024-01-15", "total": 18.5, "status": "delivered"}, {"order_id": "A-3", "date": "2024-03-30", "total": 67.2, "status": "returned"}]',
        )
    ],
)
add(
    "short_summary",
    "data",
    "What's the gist of this note? \"Reminder: the proof of address we received was older than 3 months, so we couldn't verify your account. Please upload a recent utility bill or bank statement.\"",
    note="scary: proof",
)
add(
    "short_summary",
    "ops",
    "Summarise these metrics in a sentence for the status page.",
    [
        (
            "get_metrics",
            {"service": "api", "window": "1h"},
            '{"requests": 1284133, "error_rate": 0.0011, "p50_ms": 41, "p95_ms": 180, "p99_ms": 420, "availability": 0.9998}',
        )
    ],
)
add(
    "short_summary",
    "general",
    "Sum up this voicemail transcript briefly: \"Hi it's Dr Patel's office calling to confirm your appointment on Tuesday the 4th at 2:30. If you need to reschedule please call us back on 555 0143. Thanks, bye.\"",
)
add(
    "short_summary",
    "data",
    'Summarise the following changelog entry in plain English for non-engineers: "perf: replace O(n^2) dedupe in importer with hash set; fixes timeouts for files > 50k rows"',
    note="scary: O(n^2), perf",
)

# ---------------------------------------------------------------- small_edit (easy)
CFG = 'import os\n\nTIMEOUT_SECONDS = 30\nMAX_RETRIES = 3\nBASE_URL = os.environ.get("API_BASE_URL", "https://api.example.com")\n'
add(
    "small_edit",
    "coding",
    "Bump the timeout in config.py from 30 to 60 seconds.",
    [("read_file", {"path": "config.py"}, CFG)],
)
add(
    "small_edit",
    "coding",
    "Fix the typo 'recieve' in the README.",
    [
        (
            "grep",
            {"pattern": "recieve"},
            "README.md:14:You will recieve an email when the export is ready.\n",
        )
    ],
)
add(
    "small_edit",
    "coding",
    "Add `httpx` to the dependencies list, keep it alphabetical.",
    [
        (
            "read_file",
            {"path": "pyproject.toml"},
            '[project]\nname = "shop"\nversion = "0.4.0"\ndependencies = [\n    "fastapi>=0.110",\n    "jinja2>=3.1",\n    "sqlalchemy>=2.0",\n]\n',
        )
    ],
)
add(
    "small_edit",
    "coding",
    "The function below returns None for empty input but the docstring says it returns an empty list. Make it return an empty list.",
    [
        (
            "read_file",
            {"path": "app/text.py"},
            'def split_words(text: str) -> list[str]:\n    """Split text into words. Returns an empty list for empty text."""\n    if not text:\n        return None\n    return text.split()\n',
        )
    ],
)
add(
    "small_edit",
    "coding",
    "Rename the variable `tmp` to `total` in this function.",
    [
        (
            "read_file",
            {"path": "stats.py"},
            "def sum_prices(items):\n    tmp = 0\n    for item in items:\n        tmp += item.price\n    return tmp\n",
        )
    ],
)
add(
    "small_edit",
    "coding",
    "Change the log level from DEBUG to INFO in the logging config.",
    [
        (
            "read_file",
            {"path": "logging.yaml"},
            "version: 1\nformatters:\n  plain:\n    format: '%(asctime)s %(levelname)s %(name)s %(message)s'\nhandlers:\n  console:\n    class: logging.StreamHandler\n    formatter: plain\nroot:\n  level: DEBUG\n  handlers: [console]\n",
        )
    ],
)
add(
    "small_edit",
    "coding",
    "The test fails because the expected string has a trailing space. Fix the test, not the code.",
    [
        (
            "run_tests",
            {"path": "tests/test_greet.py"},
            "F\n=================================== FAILURES ===================================\n______________________________ test_greet_name _______________________________\n\n    def test_greet_name():\n>       assert greet(\"Ana\") == \"Hello, Ana! \"\nE       AssertionError: assert 'Hello, Ana!' == 'Hello, Ana! '\nE         - Hello, Ana! \nE         ?            -\nE         + Hello, Ana!\n\ntests/test_greet.py:5: AssertionError\n1 failed in 0.03s",
        )
    ],
    note="scary: failing test + traceback, trivial fix",
)
add(
    "small_edit",
    "coding",
    "Add a `__repr__` to this dataclass-like class that shows the id and name.",
    [
        (
            "read_file",
            {"path": "models/user.py"},
            "class User:\n    def __init__(self, id: int, name: str, email: str) -> None:\n        self.id = id\n        self.name = name\n        self.email = email\n",
        )
    ],
)
add(
    "small_edit",
    "coding",
    "Update the copyright year in the LICENSE header to 2025.",
    [
        (
            "read_file",
            {"path": "LICENSE"},
            "MIT License\n\nCopyright (c) 2024 Northwind Labs\n\nPermission is hereby granted, free of charge, to any person obtaining a copy...\n",
        )
    ],
)
add(
    "small_edit",
    "coding",
    "Make the default page size 50 instead of 20.",
    [
        (
            "grep",
            {"pattern": "page_size"},
            "api/pagination.py:3:DEFAULT_PAGE_SIZE = 20\napi/pagination.py:11:    size = min(int(request.args.get('page_size', DEFAULT_PAGE_SIZE)), MAX_PAGE_SIZE)\napi/pagination.py:4:MAX_PAGE_SIZE = 200\n",
        )
    ],
)
add(
    "small_edit",
    "coding",
    "This import is unused, remove it.",
    [
        (
            "run_tests",
            {"cmd": "ruff check app/"},
            "app/routes.py:3:8: F401 [*] `json` imported but unused\nFound 1 error.\n[*] 1 fixable with the `--fix` option.",
        )
    ],
)
add(
    "small_edit",
    "coding",
    "Add a .gitignore entry for the `.env` file.",
    [("read_file", {"path": ".gitignore"}, "__pycache__/\n*.pyc\n.venv/\ndist/\n")],
)
add(
    "small_edit",
    "coding",
    "The button label says 'Sumbit'. Fix it.",
    [
        (
            "grep",
            {"pattern": "Sumbit"},
            'web/src/components/Form.tsx:48:        <button type="submit">Sumbit</button>\n',
        )
    ],
)
add(
    "small_edit",
    "coding",
    "Our CI uses Node 18 which is EOL; switch the workflow to Node 20.",
    [
        (
            "read_file",
            {"path": ".github/workflows/ci.yml"},
            "name: ci\non: [push]\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n      - uses: actions/setup-node@v4\n        with:\n          node-version: 18\n      - run: npm ci\n      - run: npm test\n",
        )
    ],
)
add(
    "small_edit",
    "coding",
    "mypy complains about this line; add the missing return type annotation.",
    [
        (
            "run_tests",
            {"cmd": "mypy app/"},
            "app/auth.py:12: error: Function is missing a return type annotation  [no-untyped-def]\n    def is_admin(user: User):\n    ^\nFound 1 error in 1 file (checked 23 source files)",
        )
    ],
    note="scary: type checker error",
)
add(
    "small_edit",
    "coding",
    "Add a `--verbose` flag to the CLI that sets the log level to DEBUG.",
    [
        (
            "read_file",
            {"path": "cli.py"},
            'import argparse\nimport logging\n\n\ndef main() -> None:\n    parser = argparse.ArgumentParser(prog="sync")\n    parser.add_argument("source")\n    parser.add_argument("--dry-run", action="store_true")\n    args = parser.parse_args()\n    logging.basicConfig(level=logging.INFO)\n    run(args.source, dry_run=args.dry_run)\n',
        )
    ],
)
add(
    "small_edit",
    "coding",
    "Use f-strings instead of .format() on this line.",
    [
        (
            "read_file",
            {"path": "report.py", "lines": "40-42"},
            '40:    title = "Report for {} ({} items)".format(customer.name, len(items))\n41:    print(title)\n42:    return title\n',
        )
    ],
)
add(
    "small_edit",
    "coding",
    "The README says the min Python is 3.8 but pyproject says 3.10. Fix the README.",
    [
        (
            "grep",
            {"pattern": "Python 3"},
            'README.md:9:Requires Python 3.8 or newer.\npyproject.toml:6:requires-python = ">=3.10"\n',
        )
    ],
)
add(
    "small_edit",
    "coding",
    "Add a default of `'en'` to the `locale` parameter.",
    [
        (
            "read_file",
            {"path": "i18n.py"},
            "def translate(key: str, locale: str) -> str:\n    return CATALOGS[locale].get(key, key)\n",
        )
    ],
)
add(
    "small_edit",
    "coding",
    "Why does the linter flag this line? Just fix it.",
    [
        (
            "run_tests",
            {"cmd": "ruff check"},
            "src/sched.py:77:5: E722 Do not use bare `except`\n   |\n75 |     try:\n76 |         job.run()\n77 |     except:\n   |     ^^^^^^ E722\n78 |         log.warning('job failed')\n   |\nFound 1 error.",
        )
    ],
    note="scary: why does",
)
add(
    "small_edit",
    "coding",
    "Change the cron schedule of the cleanup job to run at 3am instead of midnight.",
    [
        (
            "read_file",
            {"path": "deploy/cronjobs.yaml"},
            'apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: cleanup\nspec:\n  schedule: "0 0 * * *"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n            - name: cleanup\n              image: registry.example.com/cleanup:1.4\n          restartPolicy: OnFailure\n',
        )
    ],
)
add(
    "small_edit",
    "coding",
    "Add the missing comma in this JSON fixture that makes the test loader crash.",
    [
        (
            "read_file",
            {"path": "tests/fixtures/user.json"},
            '{\n  "id": 7,\n  "name": "Ada"\n  "email": "ada@example.com"\n}\n',
        )
    ],
    note="scary: crash",
)
