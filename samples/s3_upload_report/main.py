"""Runs for every new object under incoming/ in the uploads bucket: reports what arrived."""


def handler(event, context):
    data = event["data"]
    kind = data["key"].rsplit(".", 1)[-1].lower() if "." in data["key"] else "unknown"
    context.logger.info("new upload %s (%s bytes)", data["key"], data["size"])
    return {
        "bucket": data["bucket"],
        "key": data["key"],
        "size": data["size"],
        "kind": kind,
        "large": (data["size"] or 0) > 1_000_000,
    }
