"""The HTTP surface: the admin API, function URLs, the S3 webhook, OpenAPI, readiness, log
streams and the console. It knows the parts below it only through ``hub.web.services``."""
