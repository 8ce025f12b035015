// Prints, for each X-Amzn-Trace-Id on stdin (one per line), what the X-Ray SDK's own parser
// makes of it: {"root", "parent", "sampled"} as JSON, one line each.
const AWSXRay = require('aws-xray-sdk-core');
AWSXRay.setLogger({ error() {}, warn() {}, info() {}, debug() {} });
const lines = require('fs').readFileSync(0, 'utf8').split('\n');
if (lines[lines.length - 1] === '') lines.pop();
for (const line of lines) {
  const d = AWSXRay.utils.processTraceData(line);
  console.log(JSON.stringify({ root: d.root || '', parent: d.parent || '', sampled: d.sampled || '' }));
}
