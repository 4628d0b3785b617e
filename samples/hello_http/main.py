"""A function URL: GET /fn/hello/NAME answers a greeting; POST echoes the body back."""
import json


def handler(event, context):
    data = event["data"]
    name = data["pathParameters"].get("name", "world")
    if data["requestContext"]["http"]["method"] == "POST":
        return {"statusCode": 200, "headers": {"content-type": data["headers"].get("content-type", "text/plain")},
                "body": data.get("body") or "", "isBase64Encoded": data.get("isBase64Encoded", False)}
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"hello": name, "query": data.get("queryStringParameters") or {}})}
