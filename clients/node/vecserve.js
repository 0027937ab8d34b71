#!/usr/bin/env node
// Calls the vecserve EmbeddingService from Node.js and prints JSON, in the same shape as `vecserve --json`.
//
//   node vecserve.js [--address HOST:PORT] [--timeout SECONDS] [--token T] [--ca-file F] info
//   node vecserve.js [--address HOST:PORT] [--timeout SECONDS] [--token T] [--ca-file F] embed [--no-normalize] [--no-truncate] TEXT...
//
// The service definition is loaded at run time from the repository's .proto files (no generated code).
import { readFileSync } from "node:fs";
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
  --token TOKEN         bearer token for servers that require one (env VECSERVE_TOKEN)
  --ca-file FILE        PEM CA certificates that signed the server's certificate: connect with TLS
                        (env VECSERVE_CA_FILE)
  --client-cert FILE    PEM client certificate for mutual TLS (env VECSERVE_CLIENT_CERT)
  --client-key FILE     PEM key of the client certificate (env VECSERVE_CLIENT_KEY)
  --proto-root DIR      directory holding vecserve/v1/embedding.proto (default: the repository's proto/)`;

class UsageError extends Error {}

function parseCommandLine(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      address: { type: "string", default: process.env.VECSERVE_ADDRESS || "127.0.0.1:50051" },
      timeout: { type: "string", default: "30" },
      token: { type: "string", default: process.env.VECSERVE_TOKEN || undefined },
      "ca-file": { type: "string", default: process.env.VECSERVE_CA_FILE || undefined },
      "client-cert": { type: "string", default: process.env.VECSERVE_CLIENT_CERT || undefined },
      "client-key": { type: "string", default: process.env.VECSERVE_CLIENT_KEY || undefined },
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
  if (Boolean(values["client-cert"]) !== Boolean(values["client-key"])) {
    throw new UsageError("--client-cert and --client-key go together");
  }
  if (values["client-cert"] && !values["ca-file"]) {
    throw new UsageError("--client-cert needs --ca-file (mutual TLS is TLS)");
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
    token: values.token,
    caFile: values["ca-file"],
    clientCert: values["client-cert"],
    clientKey: values["client-key"],
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

function channelCredentials(options) {
  if (!options.caFile) {
    return grpc.credentials.createInsecure();
  }
  const read = (path) => readFileSync(path);
  return grpc.credentials.createSsl(
    read(options.caFile),
    options.clientKey ? read(options.clientKey) : null,
    options.clientCert ? read(options.clientCert) : null,
  );
}

// The token travels as call metadata, so it works over plaintext loopback as well as TLS.
function callMetadata(token) {
  const metadata = new grpc.Metadata();
  if (token) {
    metadata.set("authorization", `Bearer ${token}`);
  }
  return metadata;
}

// Promisified unary call with a deadline.
function call(client, method, request, options) {
  const deadline = new Date(Date.now() + options.timeoutSeconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, callMetadata(options.token), { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

async function run(options) {
  const EmbeddingService = loadEmbeddingService(options.protoRoot);
  const client = new EmbeddingService(options.address, channelCredentials(options));
  try {
    if (options.command === "info") {
      return await call(client, "GetModelInfo", {}, options);
    }
    const response = await call(
      client,
      "Embed",
      { texts: options.texts, normalize: options.normalize, truncate: options.truncate },
      options,
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
    if (error.syscall === "open") {
      console.error(`error: cannot read ${error.path}: ${error.code}`);
      return 2;
    }
    throw error;
  }
}

process.exitCode = await main();
