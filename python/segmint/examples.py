"""Bundled example audiences (the seeds' use cases) and a small generator of
e-commerce events, used by ``segmint demo`` and the sidecar's defaults."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

EXAMPLE_AUDIENCES: list[tuple[str, str]] = [
    (
        "cart_abandoners",
        'since("Checkout Started") between 2h and 24h '
        'and count("Order Completed", since "Checkout Started") == 0',
    ),
    ("lapsed_60_120d", 'since("Order Completed") between 60d and 120d'),
    ("vip", 'sum("Order Completed", revenue, 365d) > 300'),
    (
        "us_pro_skincare",
        'trait.country == "US" and trait.plan in ["pro", "enterprise"] '
        'and count("Product Viewed" where category == "skincare", 30d) >= 3',
    ),
    ("recent_purchasers", 'did("Order Completed", 7d)'),
    (
        "engaged_not_buying",
        'count("Product Viewed", 7d) >= 5 and not in_audience("recent_purchasers")',
    ),
    ("first_time_buyers", 'count("Order Completed") == 1 and did("Order Completed", 14d)'),
]

CATEGORIES = ["shoes", "skincare", "electronics", "books", "toys", "garden", "sports", "beauty"]
COUNTRIES = ["US", "US", "US", "FR", "DE", "GB", "BR", "JP"]
PLANS = ["free", "free", "pro", "enterprise"]
FUNNEL = [
    ("Product Viewed", 0.55),
    ("Added to Cart", 0.15),
    ("Checkout Started", 0.08),
    ("Order Completed", 0.05),
    ("Email Opened", 0.15),
    ("Subscription Cancelled", 0.02),
]


def generate_events(
    rng: random.Random, users: int, count: int, now: datetime
) -> list[dict[str, Any]]:
    """``count`` Segment-shaped events from ``users`` users (skewed activity)
    stamped within the hour before ``now``, plus identify calls for new users."""
    names = [name for name, _ in FUNNEL]
    weights = [w for _, w in FUNNEL]
    out: list[dict[str, Any]] = []
    for _ in range(count):
        user = f"user{int(users * rng.random() ** 2.5)}"
        ts = now - timedelta(seconds=rng.randrange(3600))
        if rng.random() < 0.02:
            out.append(
                {
                    "type": "identify",
                    "userId": user,
                    "traits": {"country": rng.choice(COUNTRIES), "plan": rng.choice(PLANS)},
                    "timestamp": ts.isoformat(),
                }
            )
        name = rng.choices(names, weights)[0]
        props: dict[str, Any] = {"category": rng.choice(CATEGORIES)}
        if name == "Order Completed":
            props["revenue"] = round(rng.lognormvariate(4, 0.8), 2)
        out.append(
            {
                "type": "track",
                "userId": user,
                "event": name,
                "properties": props,
                "context": {"device": {"type": rng.choice(["ios", "android", "web"])}},
                "timestamp": ts.isoformat(),
            }
        )
    return out
