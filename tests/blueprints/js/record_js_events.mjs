// Drives Dodo's JavaScript package (@dodopayments/ingestion-blueprints) against the local Dodo server, so the
// events it sends can be compared with ours. Run by record_js_events.py, which installs the package, starts the
// server and stores what arrived in tests/blueprints/data/js_events.json.
//
// The package builds its client with `environment` and no base URL, so requests go to test.dodopayments.com:
// `fetch` is replaced to send them to the local server instead (DODO_LOCAL_URL).
import { readFileSync } from 'node:fs';

const local = process.env.DODO_LOCAL_URL;
const realFetch = globalThis.fetch;
globalThis.fetch = (input, init) => {
  const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
  return realFetch(url.replace(/^https:\/\/(test|live)\.dodopayments\.com/, local), init);
};

const bp = await import('@dodopayments/ingestion-blueprints');
const responses = JSON.parse(readFileSync(process.env.LLM_RESPONSES, 'utf8'));
const apiKey = 'sk_test_js_parity';
const ran = [];
const cus = (name) => { ran.push(name); return `cus_js_${name}`; };

const plain = new bp.Ingestion({ apiKey, environment: 'test_mode', eventName: 'custom_event' });
await plain.track({ customerId: cus('track_plain') });
await plain.track({ customerId: cus('track_metadata'), metadata: { a: 1, b: 'x', c: true, d: 1.5 } });

const api = new bp.Ingestion({ apiKey, environment: 'test_mode', eventName: 'api_call' });
await bp.trackAPICall(api, {
  customerId: cus('api_call'),
  metadata: { endpoint: '/api/v1/users', method: 'GET', status_code: 200, response_time_ms: 45 },
});

const storage = new bp.Ingestion({ apiKey, environment: 'test_mode', eventName: 'object_storage_upload' });
await bp.trackObjectStorage(storage, {
  customerId: cus('object_storage'), bytes: 1048576, metadata: { bucket: 'my-bucket', key: 'uploads/document.pdf' },
});
await bp.trackObjectStorage(storage, { customerId: cus('object_storage_no_bytes'), metadata: { bucket: 'b' } });
await bp.trackObjectStorage(storage, { customerId: cus('object_storage_override'), bytes: 10, metadata: { bytes: 5, tier: 'cold' } });

const stream = new bp.Ingestion({ apiKey, environment: 'test_mode', eventName: 'stream_consumption' });
await bp.trackStreamBytes(stream, { customerId: cus('stream_bytes'), bytes: 10485760, metadata: { stream_type: 'video' } });
await bp.trackStreamBytes(stream, { customerId: cus('stream_zero'), bytes: 0 });

const time = new bp.Ingestion({ apiKey, environment: 'test_mode', eventName: 'function_execution' });
await bp.trackTimeRange(time, {
  customerId: cus('time_range_ms'), durationMs: 1234, metadata: { function_name: 'image-processor', memory_mb: 512 },
});
await bp.trackTimeRange(time, { customerId: cus('time_range_all'), durationMs: 90000, durationSeconds: 90, durationMinutes: 1.5 });
await bp.trackTimeRange(time, { customerId: cus('time_range_integral_float'), durationSeconds: 2.0 });
await bp.trackTimeRange(time, { customerId: cus('time_range_none'), metadata: { job: 'nightly' } });

const tracker = bp.createLLMTracker({ apiKey, environment: 'test_mode', eventName: 'llm_usage' });
for (const [name, response] of Object.entries(responses)) {
  if (name.startsWith('_')) continue;
  await tracker.track(response, cus(`llm_${name}`));
}
await tracker.track(responses.openai_chat, cus('llm_with_metadata'), { feature: 'chat', model: 'override' });
const wrapped = tracker.wrap({
  client: { chat: { completions: { create: async () => responses.anthropic_message } } },
  customerId: cus('llm_wrap'),
  metadata: { feature: 'wrap' },
});
await wrapped.chat.completions.create({ model: 'x' });

process.stdout.write(JSON.stringify(ran) + '\n');
