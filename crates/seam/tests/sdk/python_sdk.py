"""Sends the compatibility scenario through a real Python SDK.

Usage: python_sdk.py (segment|rudder) BASE_URL WRITE_KEY PREFIX
"""
import sys

sdk, base, write_key, p = sys.argv[1:5]
errors = []

def on_error(error, items):
    errors.append(repr(error))

if sdk == "segment":
    from segment.analytics import Client
    client = Client(write_key, host=base, on_error=on_error, max_retries=2)
else:
    from rudderstack.analytics import Client
    client = Client(write_key, host=base, on_error=on_error, max_retries=2)

client.page(anonymous_id=f"{p}-anon-1", name="Home", properties={"path": "/"})
client.track(anonymous_id=f"{p}-anon-1", event="Product Viewed", properties={"product_id": "sku-1", "price": 499})
client.identify(user_id=f"{p}-user-1", anonymous_id=f"{p}-anon-1",
                traits={"email": f"{p}.Buyer@Example.com", "phone": "+79123450001", "name": "Buyer"})
client.track(user_id=f"{p}-user-1", event="Order Completed", properties={"order_id": f"{p}-o-1", "revenue": 499})
client.track(anonymous_id=f"{p}-anon-2", event="Product Viewed", properties={"product_id": "sku-2"})
client.alias(previous_id=f"{p}-anon-2", user_id=f"{p}-user-1")
client.group(user_id=f"{p}-user-1", group_id=f"{p}-company", traits={"name": "Acme"})
client.flush()
client.join()
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
