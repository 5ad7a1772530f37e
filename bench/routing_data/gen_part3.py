"""Hand-written agent steps, part 3: long-context synthesis (hard) and long-input easy steps."""

import json
import random

L = []


def add(cls, sys, user, tools=None, note=""):
    L.append({"c": cls, "sys": sys, "u": user, "t": tools, "n": note})


rng = random.Random(20240607)

INTERVIEW = [
    "Honestly the setup took us two weeks because the SSO docs were out of date.",
    "We mostly use the reporting, the rest of the product is nice-to-have for us.",
    "Our finance team exports everything to Excel anyway, so the dashboards don't matter much.",
    "The price went up at renewal and nobody told us in advance, that hurt.",
    "Support is fast when you reach a human, but the chatbot loops.",
    "We'd pay more for an audit log, our compliance people keep asking for one.",
    "The mobile app is basically unusable offline, which matters for our field staff.",
    "Permissions are too coarse: we need someone who can approve but not edit.",
    "We tried the Slack integration but it was too noisy so we turned it off.",
    "Onboarding new hires is easy, they pick it up in a day.",
    "The API rate limits bite us at month end when we sync everything.",
    "I love the templates, we built our whole intake process on them.",
    "Search is slow once you have more than a few thousand records.",
    "We're evaluating a competitor because they have EU data residency.",
    "Bulk edit would save my team hours every week.",
    "Your invoices don't show the VAT number properly, our accountant complains.",
    "Honestly we'd be fine with fewer features if it were faster.",
    "The webhooks sometimes arrive twice and we had to dedupe on our side.",
]
TICKET = [
    "Export to CSV times out for large workspaces.",
    "Can't invite users with a plus sign in the email address.",
    "Dashboard shows yesterday's numbers until noon.",
    "Charged after cancelling, please refund.",
    "SSO login loops back to the sign-in page.",
    "Webhook retries are delivering duplicate events.",
    "Mobile app crashes when attaching a photo on Android 13.",
    "The API returns 500 when the filter has a unicode character.",
    "Need an invoice with our company's VAT ID on it.",
    "Reports page is very slow since last week.",
    "Password reset email never arrives (Outlook).",
    "Calendar sync shows events in the wrong timezone.",
]
PAPER = [
    "We find that retrieval augmentation reduces hallucination rates by {p}% on open-domain QA.",
    "Contrary to prior work, gains vanish when the retriever is trained jointly with the reader.",
    "Our ablation shows chunk size matters more than the number of retrieved passages.",
    "On long documents, accuracy drops sharply for evidence located in the middle of the context.",
    "The effect is smaller for models above 30B parameters ({p}% relative).",
    "Human raters preferred the baseline in {p}% of pairwise comparisons on fluency.",
    "We caution that our benchmark may overlap with pre-training data.",
    "Reranking with a cross-encoder recovers most of the loss from smaller chunk sizes.",
    "Latency increased by {p} ms per query, which may matter for interactive use.",
    "Results on multilingual queries were inconsistent and are reported in the appendix.",
]
LOGLINE = [
    "{t} api-{n} INFO GET /v1/orders 200 {ms}ms",
    "{t} api-{n} WARN slow upstream inventory {ms}ms",
    "{t} worker-{n} INFO job sync_crm done in {ms}ms",
    "{t} worker-{n} ERROR job sync_crm failed: timeout contacting crm.internal",
    "{t} api-{n} ERROR GET /v1/orders 503 upstream inventory unavailable",
    "{t} inventory-{n} WARN connection pool exhausted (50/50)",
    "{t} inventory-{n} INFO GC pause {ms}ms",
    "{t} db-proxy INFO active connections {ms}",
    "{t} api-{n} INFO POST /v1/checkout 201 {ms}ms",
    "{t} inventory-{n} ERROR query timeout after 5000ms: SELECT ... FROM stock WHERE sku IN (...)",
]
CLAUSE = [
    "The Supplier shall indemnify the Customer against third-party IP claims, capped at {p} times the annual fees.",
    "Either party may terminate for convenience with {p} days' written notice.",
    "Customer data shall be stored in the {r} region and not transferred without consent.",
    "Service credits of {p}% apply when monthly availability falls below 99.9%.",
    "Fees increase annually by the lesser of CPI or {p}%.",
    "The Supplier may use subcontractors subject to prior written notice.",
    "Liability for indirect damages is excluded except for breaches of confidentiality.",
    "This Agreement is governed by the laws of {r}.",
    "Audit rights may be exercised once per year with {p} days' notice.",
]


def doc(pool, n_sentences, **extra):
    out = []
    for _ in range(n_sentences):
        s = rng.choice(pool)
        out.append(
            s.format(
                p=rng.randint(3, 60),
                r=rng.choice(["EU", "US", "England", "Delaware", "Germany"]),
                **extra,
            )
        )
    return " ".join(out)


def logs(n):
    lines = []
    for _ in range(n):
        t = f"2024-06-0{rng.randint(1, 3)}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
        lines.append(rng.choice(LOGLINE).format(t=t, n=rng.randint(1, 6), ms=rng.randint(3, 4800)))
    return "\n".join(lines)


def interviews(k, sentences=30):
    return [
        (
            "fetch_url",
            {"url": f"https://notes.example/interview-{i + 1}"},
            f"Interview {i + 1} — customer: {rng.choice(['logistics co', 'agency', 'clinic', 'retailer', 'university', 'bank'])}, {rng.randint(10, 900)} seats\n\n"
            + doc(INTERVIEW, sentences),
        )
        for i in range(k)
    ]


# ---------------------------------------------------------------- long_context_synthesis (hard)
add(
    "long_context_synthesis",
    "research",
    "Here are the notes from the customer interviews. What are people actually asking for? Rank the themes and quote evidence.",
    interviews(6),
    note="plain phrasing",
)
add(
    "long_context_synthesis",
    "research",
    "Quickly summarise these interviews into the top 3 themes, with which customers said what.",
    interviews(8, 25),
    note="scary-easy word: summarise, quickly",
)
add(
    "long_context_synthesis",
    "research",
    "Write a literature review paragraph from these five papers: where do they agree, where do they contradict each other, and what's still open?",
    [
        ("fetch_url", {"url": f"https://papers.example/{i}"}, f"Paper {i}: " + doc(PAPER, 40))
        for i in range(1, 6)
    ],
)
add(
    "long_context_synthesis",
    "ops",
    "Go through the last day of logs from all services and tell me what the incident actually was, in order, and what triggered it.",
    [
        ("query_logs", {"query": "*", "since": "24h", "service": s}, logs(180))
        for s in ["api", "inventory", "worker"]
    ],
)
add(
    "long_context_synthesis",
    "data",
    "Compare these two versions of the contract and list every change that matters to us as the customer, with its risk.\n\nVERSION A:\n"
    + doc(CLAUSE, 70)
    + "\n\nVERSION B:\n"
    + doc(CLAUSE, 70),
)
add(
    "long_context_synthesis",
    "support",
    "Cluster these support tickets into root causes and tell me which three fixes would close the most tickets.",
    [
        (
            "search_kb",
            {"query": "tickets last 30 days"},
            json.dumps(
                [
                    {
                        "id": 1000 + i,
                        "text": rng.choice(TICKET),
                        "plan": rng.choice(["starter", "pro", "enterprise"]),
                    }
                    for i in range(260)
                ]
            ),
        )
    ],
    note="big JSON tool result",
)
add(
    "long_context_synthesis",
    "research",
    "Read these pages and answer: is our claim that 'retrieval always reduces hallucination' supported? Be precise about what each source says.",
    [("fetch_url", {"url": f"https://papers.example/r{i}"}, doc(PAPER, 55)) for i in range(1, 5)],
)
add(
    "long_context_synthesis",
    "coding",
    "Review this module for correctness and design problems and summarise the most important issues.",
    [
        (
            "read_file",
            {"path": "billing/engine.py"},
            "\n\n".join(
                f"def step_{i}(ctx, amount, region, *, currency='USD'):\n    rate = RATES.get(region)\n    if rate is None:\n        rate = 0.0  # TODO\n    total = round(amount * (1 + rate), 2)\n    if ctx.coupon and ctx.coupon.kind == 'pct':\n        total = total - total * ctx.coupon.value / 100\n    elif ctx.coupon:\n        total -= ctx.coupon.value\n    ctx.audit.append(('step_{i}', amount, total))\n    return max(total, 0)"
                for i in range(45)
            ),
        )
    ],
    note="scary-easy word: summarise",
)
add(
    "long_context_synthesis",
    "research",
    "Using all the quarterly reports below, explain how the company's margins changed over the two years and why.",
    [
        (
            "fetch_url",
            {"url": f"https://ir.example/q{q}"},
            f"Q{q} report. Revenue {rng.randint(80, 140)}M, gross margin {rng.randint(52, 71)}%. "
            + doc(
                [
                    "Cloud costs rose due to the migration.",
                    "Headcount grew {p}% in sales.",
                    "A pricing change took effect in the middle of the quarter.",
                    "Discounting increased in the enterprise segment.",
                    "Support costs fell after the self-serve portal launch.",
                    "Currency headwinds reduced EU revenue by {p}%.",
                    "Inventory write-downs of {p}M were recorded.",
                    "A large customer churned at renewal.",
                ],
                40,
            ),
        )
        for q in range(1, 9)
    ],
)
add(
    "long_context_synthesis",
    "general",
    "Here's our whole Slack thread about the outage. Write the postmortem: timeline, root cause, contributing factors, action items.\n\n"
    + "\n".join(
        f"[{rng.randint(9, 17)}:{rng.randint(0, 59):02d}] {rng.choice(['ana', 'ben', 'cy', 'dee', 'eli'])}: {rng.choice(['seeing 503s on checkout', 'inventory pool is maxed', 'rolled back inventory?', 'no, only api was deployed', 'db cpu 95%', 'someone ran the backfill at 10', 'killing the backfill', 'errors dropping', 'still slow on EU', 'cache was flushed by the deploy', 'ok green now', 'who owns the backfill job?', 'paging db on-call'])}"
        for _ in range(320)
    ),
    note="long pasted thread",
)
add(
    "long_context_synthesis",
    "research",
    "Across these six competitor pricing pages, build a comparison and tell me where we're overpriced.",
    [
        (
            "fetch_url",
            {"url": f"https://competitor{i}.example/pricing"},
            doc(
                [
                    "Starter costs ${p} per seat per month.",
                    "Pro includes SSO and audit logs.",
                    "Enterprise pricing is on request.",
                    "Annual billing saves {p}%.",
                    "API access is limited to {p}k calls per month on lower tiers.",
                    "Unlimited guests are included.",
                    "Data residency in the {r} is an add-on.",
                    "Premium support costs {p}% of the contract value.",
                ],
                35,
            ),
        )
        for i in range(1, 7)
    ],
)
add(
    "long_context_synthesis",
    "coding",
    "Read through these three files and explain how a request flows from the router to the database, including where auth and caching happen.",
    [
        (
            "read_file",
            {"path": p},
            "\n".join(
                f"def {p.split('/')[-1][:-3]}_{i}(req, *args):\n    # {rng.choice(['checks token', 'reads cache', 'writes cache', 'calls service', 'opens session', 'maps errors'])}\n    return {rng.choice(['svc', 'cache', 'repo', 'auth'])}.handle_{i}(req, *args)\n"
                for i in range(60)
            ),
        )
        for p in ["app/router.py", "app/services.py", "app/repo.py"]
    ],
)
add(
    "long_context_synthesis",
    "research",
    "I pasted the full RFC below. What exactly must a client do when it gets a 307 vs a 308 on a POST, and where does the spec leave it ambiguous?\n\n"
    + " ".join(
        rng.choice(
            [
                "A client SHOULD detect infinite redirection loops.",
                "The 307 status code indicates that the target resource resides temporarily under a different URI and the user agent MUST NOT change the request method.",
                "The 308 status code indicates that the target resource has been assigned a new permanent URI.",
                "For historical reasons, a user agent MAY change the request method from POST to GET for the subsequent request on 301 and 302.",
                "The server SHOULD generate a Location header field in the response.",
                "Caches MAY store 308 responses by default.",
                "This specification does not define the processing of a Location that contains a fragment.",
            ]
        )
        for _ in range(400)
    ),
)
add(
    "long_context_synthesis",
    "ops",
    "Look at all the metrics dumps and figure out which service is the bottleneck during the nightly batch.",
    [
        (
            "get_metrics",
            {"service": s, "window": "12h"},
            json.dumps(
                {
                    "service": s,
                    "cpu": [round(rng.random(), 2) for _ in range(120)],
                    "p95_ms": [rng.randint(20, 4000) for _ in range(120)],
                    "queue_depth": [rng.randint(0, 900) for _ in range(120)],
                }
            ),
        )
        for s in ["api", "inventory", "worker", "db", "cache"]
    ],
)
add(
    "long_context_synthesis",
    "research",
    "Based on everything you found, write the final answer to the user's question: should they move their team from Jira to Linear? Weigh the sources.",
    [
        (
            "fetch_url",
            {"url": f"https://blog{i}.example/jira-vs-linear"},
            doc(
                [
                    "Linear is faster for small teams.",
                    "Jira's workflows are more configurable.",
                    "Migration tooling exists but loses custom fields.",
                    "Enterprises value Jira's permission schemes.",
                    "Linear pricing is ${p} per user.",
                    "Reporting in Linear is limited compared to Jira.",
                    "Teams report {p}% less time in the tool after switching.",
                    "Jira's marketplace has thousands of apps.",
                ],
                40,
            ),
        )
        for i in range(1, 6)
    ],
    note="final synthesis step",
)
add(
    "long_context_synthesis",
    "data",
    "Here are 200 survey free-text answers. Give me the distribution of sentiment and the five most common complaints with counts.\n\n"
    + "\n".join(f"{i}. {doc(INTERVIEW, 1)}" for i in range(1, 201)),
)
add(
    "long_context_synthesis",
    "research",
    "Reconcile these three accounts of the migration project: they disagree on the dates and on who made the call to roll back. What most likely happened?",
    [
        (
            "fetch_url",
            {"url": f"https://wiki.example/migration-{w}"},
            f"Account by {w}: "
            + " ".join(
                rng.choice(
                    [
                        "The rollback was decided on {d} June by {who}.",
                        "The cutover started at {h}:00.",
                        "Data validation found {p} mismatched rows.",
                        "{who} was on holiday that week.",
                        "The vendor's tool failed on tables over 2B rows.",
                        "The call happened in the incident channel.",
                        "We resumed the migration {p} days later.",
                    ]
                ).format(
                    d=rng.randint(3, 20),
                    who=rng.choice(["Priya", "Tom", "Lee", "the CTO"]),
                    h=rng.randint(18, 23),
                    p=rng.randint(2, 900),
                )
                for _ in range(45)
            ),
        )
        for w in ["Priya", "Tom", "ops wiki"]
    ],
)
add(
    "long_context_synthesis",
    "coding",
    "Go through this test log and tell me which failures share a cause, and what the causes are.",
    [
        (
            "run_tests",
            {"path": "tests/"},
            "\n".join(
                rng.choice(
                    [
                        "FAILED tests/test_api.py::test_list_orders - sqlalchemy.exc.TimeoutError: QueuePool limit of size 5 overflow 10 reached",
                        "FAILED tests/test_jobs.py::test_nightly - AssertionError: expected 1200 rows, got 1199",
                        "FAILED tests/test_api.py::test_create_order - sqlalchemy.exc.TimeoutError: QueuePool limit of size 5 overflow 10 reached",
                        "FAILED tests/test_time.py::test_report_day - AssertionError: '2024-03-31' != '2024-03-30'",
                        "PASSED tests/test_utils.py::test_slug",
                        "FAILED tests/test_export.py::test_csv - UnicodeEncodeError: 'ascii' codec can't encode character",
                        "PASSED tests/test_auth.py::test_login",
                        "FAILED tests/test_jobs.py::test_cleanup - AssertionError: 1 != 0 (DST boundary)",
                    ]
                )
                for _ in range(260)
            ),
        )
    ],
)
add(
    "long_context_synthesis",
    "general",
    "Read my thesis chapter and tell me whether the argument holds together from start to finish.\n\n"
    + " ".join(
        rng.choice(
            [
                "Prior studies have treated remote work as a uniform phenomenon.",
                "We argue instead that its effects depend on team tenure.",
                "The survey sample comprised 1,204 employees across 9 firms.",
                "Regression results suggest a negative association for new teams.",
                "However, the effect reverses for teams older than two years.",
                "Qualitative interviews complicate this picture.",
                "We therefore conclude that hybrid policies should be tenure-aware.",
                "Limitations include self-selection into remote roles.",
            ]
        )
        for _ in range(300)
    ),
    note="plain phrasing, long",
)
add(
    "long_context_synthesis",
    "research",
    "Pull together what these sources say about the side effects of the drug and flag where they conflict.",
    [
        (
            "fetch_url",
            {"url": f"https://med.example/s{i}"},
            doc(
                [
                    "Nausea was reported in {p}% of patients.",
                    "No significant hepatotoxicity was observed.",
                    "Two cases of elevated liver enzymes were reported.",
                    "Headache incidence did not differ from placebo.",
                    "The trial excluded patients over 75.",
                    "Dizziness affected {p}% in the high-dose arm.",
                    "Post-marketing reports suggest rare skin reactions.",
                ],
                40,
            ),
        )
        for i in range(1, 6)
    ],
    note="scary-easy word: pull together",
)
add(
    "long_context_synthesis",
    "data",
    "Attached are the minutes from the last 12 board meetings. Extract every decision about hiring and tell me how the hiring plan evolved over the year.\n\n"
    + "\n\n".join(
        f"MINUTES {m}: "
        + doc(
            [
                "The board approved the budget.",
                "Hiring of {p} engineers was approved.",
                "The hiring freeze was extended.",
                "Sales headcount was cut by {p}.",
                "The CFO presented the runway at {p} months.",
                "A new VP of Marketing will be recruited.",
                "The office move was postponed.",
            ],
            25,
        )
        for m in range(1, 13)
    ),
    note="scary-easy word: extract",
)
add(
    "long_context_synthesis",
    "research",
    "Turn all of this research into a one-page brief for the exec team with a clear recommendation.",
    [
        ("fetch_url", {"url": f"https://research.example/{i}"}, doc(PAPER + INTERVIEW, 45))
        for i in range(1, 7)
    ],
    note="plain",
)

# ---------------------------------------------------------------- long-input but easy
add(
    "extraction",
    "research",
    "What's the license of this project according to its README?",
    [
        (
            "fetch_url",
            {"url": "https://example.org/README"},
            "# fastgrid\n\n"
            + doc(
                [
                    "fastgrid renders large tables quickly.",
                    "It supports virtual scrolling.",
                    "Columns can be pinned.",
                    "Sorting and filtering happen on the server.",
                    "See the docs for theming.",
                ],
                120,
            )
            + "\n\n## License\n\nfastgrid is released under the Apache License 2.0.\n",
        )
    ],
    note="long input, easy lookup",
)
add(
    "extraction",
    "ops",
    "What's the status of the `payments` component in this status JSON?",
    [
        (
            "get_metrics",
            {"endpoint": "status"},
            json.dumps(
                {
                    "components": [
                        {
                            "name": n,
                            "status": "operational" if n != "payments" else "degraded_performance",
                            "uptime_90d": round(99 + rng.random(), 3),
                        }
                        for n in [
                            "api",
                            "web",
                            "search",
                            "payments",
                            "email",
                            "sms",
                            "webhooks",
                            "exports",
                            "auth",
                            "billing",
                        ]
                        * 12
                    ]
                }
            ),
        )
    ],
    note="long JSON, easy lookup",
)
add(
    "classification",
    "support",
    "Is this long email a complaint, a question or a compliment? One word.\n\n"
    + "Dear team, "
    + " ".join(
        rng.choice(
            [
                "I just wanted to say how much we appreciate the work you've put in.",
                "The new dashboard is exactly what we needed.",
                "Our analysts use it every day.",
                "The onboarding call with Sam was excellent.",
                "Keep it up!",
            ]
        )
        for _ in range(60)
    ),
    note="long input, easy",
)
add(
    "short_summary",
    "general",
    'Summarise this paragraph in one line: "The library closes at 6pm on weekdays and 4pm on Saturdays. It is closed on Sundays and public holidays. Late returns can be left in the drop box."',
)
add(
    "faq",
    "support",
    "The customer asked: 'does the export include archived projects?'. Answer from the doc.",
    [
        (
            "search_kb",
            {"query": "export archived projects"},
            '[{"title": "Exporting data", "text": "'
            + " ".join(
                rng.choice(
                    [
                        "Exports include all active projects.",
                        "Archived projects are included only when 'Include archived' is ticked.",
                        "Exports are emailed as a zip file.",
                        "Large exports may take up to an hour.",
                    ]
                )
                for _ in range(40)
            )
            + '"}]',
        )
    ],
    note="longish KB result",
)
