"""The seed audiences as named scenarios, with hand-computed changes.

Each scenario runs against the reference alone and, once ``segmint._core``
is built, against the engine and the reference together (``make_pair``):
after every step both must agree on every membership, and at the end the
changes (audience, kind, exact ``at`` instant, reason) must equal the ones
written here.
"""

from __future__ import annotations

from conftest import ChangeTuple, PairFactory, by_user
from reference import DAY, HOUR, SECOND
from rulegen import T0

CART = (
    'since("Checkout Started") between 2h and 24h\n'
    '    and count("Order Completed", since "Checkout Started") == 0'
)

Expected = dict[str, list[tuple[str, str, int, str]]]


def assert_changes(changes: list[ChangeTuple], expected: Expected) -> None:
    got = by_user(changes)
    assert {u: v for u, v in got.items() if v} == {u: v for u, v in expected.items() if v}


def test_cart_abandoners(make_pair: PairFactory) -> None:
    p = make_pair(T0)
    assert p.define("cart_abandoners", CART) == 0
    for user in ("abandoner", "buyer", "late_buyer", "again"):
        p.track(user, "Checkout Started", {"revenue": 80}, timestamp=T0)
    p.track("prior", "Order Completed", timestamp=T0 - HOUR)  # before the checkout: no effect
    p.track("prior", "Checkout Started", timestamp=T0)
    assert p.advance(T0 + HOUR) == []
    assert p.track("buyer", "Order Completed") == []  # orders in between: never enters
    assert p.advance(T0 + 2 * HOUR - SECOND) == []
    entered = p.advance(T0 + 5 * HOUR)
    assert sorted((c.user, c.at, c.reason) for c in entered) == [
        (u, T0 + 2 * HOUR, "time") for u in ("abandoner", "again", "late_buyer", "prior")
    ]
    p.track("late_buyer", "Order Completed")  # exits at once
    p.advance(T0 + 10 * HOUR)
    p.track("again", "Checkout Started")  # since() restarts: exits, re-enters 2 h later
    p.advance(T0 + 3 * DAY)
    assert p.ref.members("cart_abandoners") == []
    aud = "cart_abandoners"
    assert_changes(
        p.changes(),
        {
            "abandoner": [
                (aud, "entered", T0 + 2 * HOUR, "time"),
                (aud, "exited", T0 + 24 * HOUR + SECOND, "time"),
            ],
            "prior": [
                (aud, "entered", T0 + 2 * HOUR, "time"),
                (aud, "exited", T0 + 24 * HOUR + SECOND, "time"),
            ],
            "late_buyer": [
                (aud, "entered", T0 + 2 * HOUR, "time"),
                (aud, "exited", T0 + 5 * HOUR, "event"),
            ],
            "again": [
                (aud, "entered", T0 + 2 * HOUR, "time"),
                (aud, "exited", T0 + 10 * HOUR, "event"),
                (aud, "entered", T0 + 12 * HOUR, "time"),
                (aud, "exited", T0 + 34 * HOUR + SECOND, "time"),
            ],
        },
    )


def test_cart_abandoners_single_long_advance(make_pair: PairFactory) -> None:
    """No traffic at all after the checkout: entry and exit both come from one advance."""
    p = make_pair(T0)
    p.define("cart_abandoners", CART)
    p.track("u", "Checkout Started", timestamp=T0 + 30 * SECOND)  # slightly in the future
    assert p.advance(T0 + 7 * DAY) == [
        ("cart_abandoners", "u", "entered", T0 + 30 * SECOND + 2 * HOUR, "time"),
        ("cart_abandoners", "u", "exited", T0 + 30 * SECOND + 24 * HOUR + SECOND, "time"),
    ]
    p.changes(exact=True)


def test_lapsed_customers(make_pair: PairFactory) -> None:
    p = make_pair(T0)
    p.define("lapsed", 'since("Order Completed") between 60d and 120d')
    p.track("u1", "Order Completed", {"revenue": 20})
    p.track("u2", "Order Completed", {"revenue": 20})
    late = p.track("u3", "Order Completed", timestamp=T0 - 90 * DAY)  # late: enters at once
    assert late == [("lapsed", "u3", "entered", T0, "event")]
    assert p.advance(T0 + 30 * DAY) == []  # since = 120d exactly: still in (inclusive)
    p.track("u2", "Order Completed")
    p.advance(T0 + 200 * DAY)
    assert p.changes(exact=True) == [
        ("lapsed", "u3", "entered", T0, "event"),
        ("lapsed", "u3", "exited", T0 + 30 * DAY + SECOND, "time"),
        ("lapsed", "u1", "entered", T0 + 60 * DAY, "time"),
        ("lapsed", "u2", "entered", T0 + 90 * DAY, "time"),
        ("lapsed", "u1", "exited", T0 + 120 * DAY + SECOND, "time"),
        ("lapsed", "u2", "exited", T0 + 150 * DAY + SECOND, "time"),
    ]


def test_vip_lifetime_value(make_pair: PairFactory) -> None:
    p = make_pair(T0)
    p.define("vip", 'sum("Order Completed", revenue, 365d) > 300')
    p.track("u1", "Order Completed", {"revenue": 200})
    p.track("u2", "Order Completed", {"revenue": 300})
    p.track("u2", "Order Completed", {"revenue": "500"})  # not a number: skipped
    p.track("u2", "Order Completed", {"revenue": True})  # booleans are not numbers
    p.track("u2", "Order Completed", {"currency": "EUR"})  # no revenue: skipped
    p.track("u3", "Order Completed", {"revenue": 301}, timestamp=T0 - 364 * DAY)
    assert p.ref.members("vip") == ["u3"]
    p.advance(T0 + 10 * DAY)
    p.track("u1", "Order Completed", {"revenue": 150})
    p.track("u2", "Order Completed", {"revenue": 0.5})
    assert p.ref.members("vip") == ["u1", "u2"]
    # backfill of a new audience: reason `definition`, at = now
    assert p.define("big_spenders", 'sum("Order Completed", revenue) >= 350') == 1
    p.advance(T0 + 400 * DAY)  # the T0 orders leave the 365-day window at T0 + 365d
    assert p.ref.members("vip") == []
    p.remove("big_spenders")
    assert_changes(
        p.changes(),
        {
            "u1": [
                ("vip", "entered", T0 + 10 * DAY, "event"),
                ("big_spenders", "entered", T0 + 10 * DAY, "definition"),
                ("vip", "exited", T0 + 365 * DAY, "time"),
                ("big_spenders", "exited", T0 + 400 * DAY, "delete"),
            ],
            "u2": [
                ("vip", "entered", T0 + 10 * DAY, "event"),
                ("vip", "exited", T0 + 365 * DAY, "time"),
            ],
            "u3": [
                ("vip", "entered", T0, "event"),
                ("vip", "exited", T0 + DAY, "time"),
            ],
        },
    )


MICRO = (
    'trait.country == "US" and trait.plan in ["pro", "enterprise"] and trait.ltv > 100\n'
    '  and count("Product Viewed" where category == "shoes" and context.device.type == "ios",'
    " 7d) >= 2"
)


def test_micro_segment(make_pair: PairFactory) -> None:
    p = make_pair(T0)
    p.define("us_pro_shoe_fans", MICRO)
    ios = {"device": {"type": "ios"}}
    web = {"device": {"type": "web"}}
    shoes = {"category": "shoes"}
    p.identify("u1", {"country": "US", "plan": "pro", "ltv": 150})
    p.identify("u2", {"country": "US", "plan": "pro", "ltv": 150})
    p.identify("u3", {"country": "FR", "plan": "free", "ltv": 500})
    for user, ctx in (("u1", ios), ("u2", web), ("u3", ios)):
        p.track(user, "Product Viewed", shoes, context=ctx)
    p.track("u1", "Product Viewed", {"category": "books"}, context=ios)  # filtered out
    p.advance(T0 + DAY)
    for user, ctx in (("u1", ios), ("u2", web), ("u3", ios)):
        p.track(user, "Product Viewed", shoes, context=ctx)
    p.identify("u3", {"country": "US", "plan": "enterprise"})  # enters through traits
    p.advance(T0 + DAY + HOUR)
    p.identify("u3", {"ltv": "lots"})  # not a number: the comparison is false
    p.advance(T0 + 7 * DAY + HOUR)  # the T0 views leave the window at T0 + 7d
    p.track("u1", "Product Viewed", shoes, context=ios)
    p.identify("u1", {"plan": None})  # deleted trait: null, comparison false
    aud = "us_pro_shoe_fans"
    assert_changes(
        p.changes(),
        {
            "u1": [
                (aud, "entered", T0 + DAY, "event"),
                (aud, "exited", T0 + 7 * DAY, "time"),
                (aud, "entered", T0 + 7 * DAY + HOUR, "event"),
                (aud, "exited", T0 + 7 * DAY + HOUR, "event"),
            ],
            "u3": [
                (aud, "entered", T0 + DAY, "event"),
                (aud, "exited", T0 + DAY + HOUR, "event"),
            ],
        },
    )


def test_recent_purchaser_exclusion(make_pair: PairFactory) -> None:
    p = make_pair(T0)
    p.define("recent_purchasers", 'did("Order Completed", 30d)')
    p.define(
        "engaged_not_recent",
        'count("Product Viewed", 7d) >= 3 and not in_audience("recent_purchasers")',
    )
    p.define("loyal", 'member_for("recent_purchasers") >= 7d')
    p.track("u1", "Order Completed")
    for _ in range(3):
        p.track("u2", "Product Viewed")
    p.track("u2", "Order Completed")  # enters recent, leaves engaged, in one event
    p.advance(T0 + 29 * DAY)
    for _ in range(3):
        p.track("u1", "Product Viewed")  # excluded: a recent purchaser
    assert not p.ref.is_member("u1", "engaged_not_recent")
    p.advance(T0 + 40 * DAY)
    recent, engaged, loyal = "recent_purchasers", "engaged_not_recent", "loyal"
    assert_changes(
        p.changes(),
        {
            "u1": [
                (recent, "entered", T0, "event"),
                (loyal, "entered", T0 + 7 * DAY, "time"),
                (recent, "exited", T0 + 30 * DAY, "time"),
                (engaged, "entered", T0 + 30 * DAY, "time"),
                (loyal, "exited", T0 + 30 * DAY, "time"),
                (engaged, "exited", T0 + 36 * DAY, "time"),
            ],
            "u2": [
                (engaged, "entered", T0, "event"),
                (recent, "entered", T0, "event"),
                (engaged, "exited", T0, "event"),
                (loyal, "entered", T0 + 7 * DAY, "time"),
                (recent, "exited", T0 + 30 * DAY, "time"),
                (loyal, "exited", T0 + 30 * DAY, "time"),
            ],
        },
    )


def test_first_time_buyers(make_pair: PairFactory) -> None:
    p = make_pair(T0)
    p.define(
        "first_time_buyers", 'count("Order Completed") == 1 and since("Order Completed") < 14d'
    )
    p.define("new_signup_buyers", 'since(trait.created_at) < 14d and did("Order Completed")')
    p.identify("u3", {"created_at": "2025-12-19T00:00:00Z"})  # T0 - 13d
    p.identify("u4", {"created_at": "2025-12-19T02:00:00+02:00"})  # same instant, other offset
    for user in ("u1", "u2", "u3"):
        p.track(user, "Order Completed", {"revenue": 10})
    p.advance(T0 + DAY - SECOND)
    p.track("u4", "Order Completed", {"revenue": 10})
    p.advance(T0 + DAY)
    p.track("u2", "Order Completed", {"revenue": 10})  # second order: no longer first-time
    p.advance(T0 + 30 * DAY)
    ftb, nsb = "first_time_buyers", "new_signup_buyers"
    assert_changes(
        p.changes(),
        {
            "u1": [(ftb, "entered", T0, "event"), (ftb, "exited", T0 + 14 * DAY, "time")],
            "u2": [(ftb, "entered", T0, "event"), (ftb, "exited", T0 + DAY, "event")],
            "u3": [
                (ftb, "entered", T0, "event"),
                (nsb, "entered", T0, "event"),
                (nsb, "exited", T0 + DAY, "time"),
                (ftb, "exited", T0 + 14 * DAY, "time"),
            ],
            "u4": [
                (ftb, "entered", T0 + DAY - SECOND, "event"),
                (nsb, "entered", T0 + DAY - SECOND, "event"),
                (nsb, "exited", T0 + DAY, "time"),
                (ftb, "exited", T0 + 15 * DAY - SECOND, "time"),
            ],
        },
    )


def test_future_event_enters_at_its_instant(make_pair: PairFactory) -> None:
    p = make_pair(T0)
    p.define("viewers", 'did("Product Viewed", 1m)')
    p.track("u", "Product Viewed", timestamp=T0 + 2 * 60 * SECOND)
    assert p.ref.members("viewers") == []
    p.advance(T0 + HOUR)
    assert p.changes(exact=True) == [
        ("viewers", "u", "entered", T0 + 120 * SECOND, "time"),
        ("viewers", "u", "exited", T0 + 180 * SECOND, "time"),
    ]
