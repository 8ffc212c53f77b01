// Sends the compatibility scenario through a real Node SDK.
// Usage: node node_sdk.js (segment|rudder) BASE_URL WRITE_KEY PREFIX
const [sdk, base, writeKey, p] = process.argv.slice(2);

async function main() {
  let client;
  let done;
  if (sdk === 'segment') {
    const { Analytics } = require('@segment/analytics-node');
    client = new Analytics({ writeKey, host: base, maxEventsInBatch: 4, flushInterval: 50, maxRetries: 2 });
    client.on('error', (e) => { console.error(e); process.exitCode = 1; });
    done = () => client.closeAndFlush({ timeout: 10000 });
  } else {
    const Analytics = require('@rudderstack/rudder-sdk-node');
    client = new Analytics(writeKey, { dataPlaneUrl: base, flushAt: 4, flushInterval: 50, retryCount: 2,
      errorHandler: (e) => { console.error(e); process.exitCode = 1; } });
    done = () => client.flush();
  }
  client.page({ anonymousId: `${p}-anon-1`, name: 'Home', properties: { path: '/' } });
  client.track({ anonymousId: `${p}-anon-1`, event: 'Product Viewed', properties: { product_id: 'sku-1', price: 499 } });
  client.identify({ userId: `${p}-user-1`, anonymousId: `${p}-anon-1`,
    traits: { email: `${p}.Buyer@Example.com`, phone: '+79123450001', name: 'Buyer' } });
  client.track({ userId: `${p}-user-1`, event: 'Order Completed', properties: { order_id: `${p}-o-1`, revenue: 499 } });
  client.track({ anonymousId: `${p}-anon-2`, event: 'Product Viewed', properties: { product_id: 'sku-2' } });
  client.alias({ previousId: `${p}-anon-2`, userId: `${p}-user-1` });
  client.group({ userId: `${p}-user-1`, groupId: `${p}-company`, traits: { name: 'Acme' } });
  await done();
}

main().catch((e) => { console.error(e); process.exit(1); });
