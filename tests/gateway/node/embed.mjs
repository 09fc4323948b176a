// The official openai npm client against the gateway: prints the embeddings it decoded, as JSON.
// Usage: node embed.mjs BASE_URL MODEL JSON_INPUT [DIMENSIONS]
import OpenAI from "openai";

const [baseURL, model, input, dimensions] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY || "unused", maxRetries: 0 });
const params = { model, input: JSON.parse(input) };
if (dimensions) params.dimensions = Number(dimensions);
const res = await client.embeddings.create(params); // no encoding_format: the client asks for base64
console.log(
  JSON.stringify({
    model: res.model,
    usage: res.usage,
    data: res.data.map((d) => ({ index: d.index, embedding: Array.from(d.embedding) })),
  }),
);
