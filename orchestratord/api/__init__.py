"""The HTTP edge (aiohttp): routes of the data and control planes, the middleware every
request passes, the one place errors become HTTP statuses (`errors`), and the generated
OpenAPI documents (`openapi`). Everything below it speaks in typed errors, never statuses.
"""
