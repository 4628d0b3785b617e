"""Counts clicks per page in each message of the clicks topic (a JSON list of click events)."""
import collections


async def handler(event, context):
    value = event["data"]["value"]
    clicks = value if isinstance(value, list) else [value]
    per_page = collections.Counter(c.get("page", "?") for c in clicks if isinstance(c, dict))
    return {"partition": event["data"]["partition"], "offset": event["data"]["offset"],
            "clicks": sum(per_page.values()), "per_page": dict(per_page)}
