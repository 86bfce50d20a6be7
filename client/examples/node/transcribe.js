#!/usr/bin/env node
// Transcribe one audio file with the asr.v1 gRPC API from Node.js.
//
//   npm ci            (installs @grpc/grpc-js and @grpc/proto-loader)
//   node transcribe.js --server localhost:50051 talk.wav [--model NAME] [--language en]
//                      [--token TOKEN] [--tls-ca ca.pem]
//
// The file is streamed in 256 KiB chunks over Recognizer.StreamingRecognize (config first,
// then audio); per-segment results are printed to stderr as they arrive, and the whole
// result is printed to stdout as one JSON object with the same keys as
// `asr-client transcribe --format json` (file, text, segments, device, fallback_reason, ...).
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const CHUNK_BYTES = 256 * 1024;
const PROTO_ROOT = process.env.ASR_PROTO_ROOT || path.resolve(__dirname, '..', '..', '..', 'protos');

function parseArgs(argv) {
  const opts = { server: process.env.ASR_SERVER || 'localhost:50051', token: process.env.ASR_TOKEN || '',
    tlsCa: process.env.ASR_TLS_CA || '', model: '', language: 'auto', timeoutS: 600, file: null };
  const flags = { '--server': 'server', '--token': 'token', '--tls-ca': 'tlsCa', '--model': 'model',
    '--language': 'language', '--timeout': 'timeoutS' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a in flags) {
      opts[flags[a]] = argv[++i];
    } else if (a === '-h' || a === '--help') {
      console.log('usage: node transcribe.js [--server HOST:PORT] [--model NAME] [--language L] ' +
        '[--token T] [--tls-ca CA.pem] [--timeout S] FILE');
      process.exit(0);
    } else if (opts.file === null) {
      opts.file = a;
    } else {
      throw new Error(`unexpected argument ${a}`);
    }
  }
  if (opts.file === null) throw new Error('give an audio file');
  return opts;
}

function loadApi() {
  const def = protoLoader.loadSync('asr/v1/asr.proto', {
    includeDirs: [PROTO_ROOT], keepCase: true, longs: Number, enums: String, defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(def).asr.v1;
}

function toRecord(file, r) {
  return {
    file, text: r.text,
    segments: r.segments.map((s) => ({ start_ms: s.start_ms, end_ms: s.end_ms, text: s.text, device: s.device })),
    device: r.device, fallback_reason: r.fallback_reason, language: r.language, model: r.model,
    audio_duration_s: r.audio_duration_s, queue_time_s: r.queue_time_s,
    inference_time_s: r.inference_time_s, request_id: r.request_id,
  };
}

function transcribe(opts) {
  const api = loadApi();
  const creds = opts.tlsCa ? grpc.credentials.createSsl(fs.readFileSync(opts.tlsCa))
    : grpc.credentials.createInsecure();
  const client = new api.Recognizer(opts.server, creds);
  const metadata = new grpc.Metadata();
  if (opts.token) metadata.add('authorization', `Bearer ${opts.token}`);
  const deadline = new Date(Date.now() + Number(opts.timeoutS) * 1000);
  return new Promise((resolve, reject) => {
    let last = null;
    const call = client.StreamingRecognize(metadata, { deadline });
    call.on('data', (resp) => {
      if (resp.is_last) {
        last = resp.result;
      } else if (resp.is_final) {
        process.stderr.write(`segment: ${JSON.stringify(resp.result.text)}\n`);
      }
    });
    call.on('error', (err) => { client.close(); reject(err); });
    call.on('end', () => {
      client.close();
      if (last === null) reject(new Error('the stream ended without a final result'));
      else resolve(toRecord(opts.file, last));
    });
    call.write({ streaming_config: { config: { language: opts.language, model: opts.model,
      enable_segment_timestamps: true } } });
    const stream = fs.createReadStream(opts.file, { highWaterMark: CHUNK_BYTES });
    stream.on('data', (chunk) => {
      // Respect flow control: pause reading while gRPC's buffer is full.
      if (!call.write({ audio_content: chunk })) {
        stream.pause();
        call.once('drain', () => stream.resume());
      }
    });
    stream.on('end', () => call.end());
    stream.on('error', (err) => { call.cancel(); reject(err); });
  });
}

if (require.main === module) {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`transcribe.js: ${err.message}`);
    process.exit(2);
  }
  transcribe(opts).then((record) => {
    console.log(JSON.stringify(record));
  }).catch((err) => {
    // gRPC errors carry a numeric code and its name in `details`/`message`.
    const name = err.code !== undefined ? (Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || err.code) : 'ERROR';
    console.error(`transcribe.js: ${name}: ${err.details || err.message}`);
    process.exit(1);
  });
}

module.exports = { transcribe, loadApi };
