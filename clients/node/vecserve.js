#!/usr/bin/env node
// Calls the vecserve EmbeddingService from Node.js and prints JSON, in the same shape as `vecserve --json`.
//
//   node vecserve.js [--address HOST:PORT] [--timeout SECONDS] info
//   node vecserve.js [--address HOST:PORT] [--timeout SECONDS] embed [--no-normalize] [--no-truncate] TEXT...
//
// The service definition is loaded at run time from the repository's .proto files (no generated code).
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const DEFAULT_PROTO_ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "proto");
const USAGE = `usage: vecserve.js [--address HOST:PORT] [--timeout SECONDS] [--proto-root DIR] COMMAND

commands:
  info                                           describe the server's model and limits
  embed [--no-normalize] [--no-truncate] TEXT... embed texts

options:
  --address HOST:PORT   server address (env VECSERVE_ADDRESS; default 127.0.0.1:50051)
  --timeout SECONDS     deadline of each call (default 30)
  --proto-root DIR      directory holding vecserve/v1/embedding.proto (default: the repository's proto/)`;

class UsageError extends Error {}

function parseCommandLine(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      address: { type: "string", default: process.env.VECSERVE_ADDRESS || "127.0.0.1:50051" },
      timeout: { type: "string", default: "30" },
      "proto-root": { type: "string", default: DEFAULT_PROTO_ROOT },
      "no-normalize": { type: "boolean", default: false },
      "no-truncate": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    return { help: true };
  }
  const [command, ...texts] = positionals;
  const timeoutSeconds = Number(values.timeout);
  if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0) {
    throw new UsageError(`--timeout must be a positive number of seconds, got ${values.timeout}`);
  }
  if (command === "embed" && texts.length === 0) {
    throw new UsageError("embed needs at least one TEXT");
  }
  if (command === "info" && texts.length > 0) {
    throw new UsageError("info takes no arguments");
  }
  if (command !== "embed" && command !== "info") {
    throw new UsageError(command ? `unknown command ${command}` : "a COMMAND is required");
  }
  return {
    command,
    texts,
    address: values.address,
    timeoutSeconds,
    protoRoot: values["proto-root"],
    normalize: !values["no-normalize"],
    truncate: !values["no-truncate"],
  };
}

function loadEmbeddingService(protoRoot) {
  const definition = protoLoader.loadSync("vecserve/v1/embedding.proto", {
    includeDirs: [protoRoot],
    // Field names as written in the .proto (token_count, not tokenCount), like the Python client's JSON.
    keepCase: true,
    // 64-bit integers as decimal strings, as the protobuf JSON mapping writes them.
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).vecserve.v1.EmbeddingService;
}

// Promisified unary call with a deadline.
function call(client, method, request, timeoutSeconds) {
  const deadline = new Date(Date.now() + timeoutSeconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

async function run(options) {
  const EmbeddingService = loadEmbeddingService(options.protoRoot);
  const client = new EmbeddingService(options.address, grpc.credentials.createInsecure());
  try {
    if (options.command === "info") {
      return await call(client, "GetModelInfo", {}, options.timeoutSeconds);
    }
    const response = await call(
      client,
      "Embed",
      { texts: options.texts, normalize: options.normalize, truncate: options.truncate },
      options.timeoutSeconds,
    );
    return {
      dimension: response.dimension,
      embeddings: response.embeddings.map((embedding, position) => ({
        text: options.texts[position],
        vector: embedding.values,
        token_count: embedding.token_count,
        truncated: embedding.truncated,
      })),
    };
  } finally {
    client.close();
  }
}

async function main() {
  let options;
  try {
    options = parseCommandLine(process.argv.slice(2));
  } catch (error) {
    // parseArgs throws TypeErrors with a code for unknown or malformed options.
    if (error instanceof UsageError || error.code?.startsWith("ERR_PARSE_ARGS")) {
      console.error(`error: ${error.message}\n\n${USAGE}`);
      return 2;
    }
    throw error;
  }
  if (options.help) {
    console.log(USAGE);
    return 0;
  }
  try {
    console.log(JSON.stringify(await run(options)));
    return 0;
  } catch (error) {
    if (typeof error.code === "number" && error.code in grpc.status) {
      console.error(`error: ${grpc.status[error.code]}: ${error.details}`);
      return 1;
    }
    throw error;
  }
}

process.exitCode = await main();
