// The Express application (no listen): request ids and access logs, CORS, body parsing with size / UTF-8 /
// depth checks, auth and rate limits, the routes, and the one error middleware. main.ts starts it.
import crypto from "node:crypto";

import cors from "cors";
import express, { type NextFunction, type Request, type Response } from "express";

import { ValidationError } from "../../engine/src/errors.js";
import { apiKeyAuth, rateLimiter } from "./auth.js";
import type { ServerContext } from "./context.js";
import { HttpError, toHttpError } from "./errors.js";
import { adapterRoutes } from "./routes/adapters.js";
import { generateRoutes } from "./routes/generate.js";
import { miscRoutes } from "./routes/misc.js";
import { openaiRoutes } from "./routes/openai.js";
import { checkRawBody } from "./validate.js";

const styleOf = (req: Request) => (req.originalUrl.startsWith("/v1/") ? "openai" : "native");

export function createApp(ctx: ServerContext): express.Express {
  const app = express();
  app.disable("x-powered-by");
  app.set("trust proxy", false);

  app.use((req, res, next) => {
    const given = req.headers["x-request-id"];
    const id = typeof given === "string" && /^[\w.:-]{1,128}$/.test(given) ? given : crypto.randomUUID();
    res.setHeader("x-request-id", id);
    const log = ctx.logger.child({ reqId: id });
    res.locals.log = log;
    const t0 = performance.now();
    res.on("finish", () => log.info({ method: req.method, path: req.path, status: res.statusCode, ms: Math.round(performance.now() - t0) }, "request"));
    next();
  });
  if (ctx.config.corsAllowOrigin.length > 0) app.use(cors({ origin: ctx.config.corsAllowOrigin, exposedHeaders: ["x-request-id"] }));
  app.use(
    express.json({
      limit: ctx.config.payloadLimit,
      verify: (_req, _res, buf) => checkRawBody(buf),
    }),
  );

  const protect = [apiKeyAuth(ctx.config.apiKeys), rateLimiter(ctx.config.rateLimitRpm)];
  app.use(["/generate", "/generate_stream", "/tokenize", "/v1"], ...protect);
  app.use(miscRoutes(ctx));
  app.use(generateRoutes(ctx));
  app.use(openaiRoutes(ctx));
  app.use(adapterRoutes(ctx));

  app.use((req: Request, res: Response) => {
    const { status, body } = toHttpError(new HttpError(404, "not_found", `no route ${req.method} ${req.path}: see /openapi.json`), styleOf(req));
    res.status(status).json(body);
  });
  app.use((err: any, req: Request, res: Response, _next: NextFunction) => {
    let e: unknown = err;
    if (err?.type === "entity.too.large") e = new HttpError(413, "validation", `request body of ${err.length} bytes is over the ${err.limit}-byte limit (--payload-limit)`, "payload_too_large");
    else if (err?.type === "entity.parse.failed") e = new ValidationError(`the request body is not valid JSON: ${err.message}`, "body");
    else if (err?.type === "entity.verify.failed") e = new ValidationError(err.message, "body");
    else if (typeof err?.type === "string" && typeof err?.status === "number" && err.status < 500) e = new ValidationError(err.message, "body");
    const { status, body, headers } = toHttpError(e, styleOf(req));
    if (status >= 500) (res.locals.log ?? ctx.logger).error({ err: err?.message, stack: err?.stack }, "unhandled error");
    if (res.headersSent) return void res.end();
    res.status(status).set(headers).json(body);
  });
  return app;
}
