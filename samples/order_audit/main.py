"""Audits changes to shop.orders: computes the order total and flags large ones."""


def handler(event, context):
    change = event["data"]
    order = change.get("fullDocument") or {}
    items = order.get("items", [])
    total = round(sum(i.get("price", 0) * i.get("qty", 1) for i in items), 2)
    return {
        "operation": change["operationType"],
        "order_id": order.get("_id"),
        "status": order.get("status"),
        "total": total,
        "flag": "review" if total > 1000 else "ok",
        "changed": sorted((change.get("updateDescription") or {}).get("updatedFields", {})),
    }
