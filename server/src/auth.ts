// Caller authentication and limits: --api-keys through passport + passport-http-bearer, per-caller rate limits
// through express-rate-limit (off unless --rate-limit-rpm). Failures go through the error table.
import crypto from "node:crypto";

import type { NextFunction, Request, RequestHandler, Response } from "express";
import { ipKeyGenerator, rateLimit } from "express-rate-limit";
import passport from "passport";
import { Strategy as BearerStrategy } from "passport-http-bearer";

import { OverloadedError } from "../../engine/src/errors.js";
import { HttpError, toHttpError } from "./errors.js";

const styleOf = (req: Request) => (req.originalUrl.startsWith("/v1/") ? "openai" : "native");

function sendError(req: Request, res: Response, err: unknown): void {
  const { status, body, headers } = toHttpError(err, styleOf(req));
  res.status(status).set(headers).json(body);
}

/** Requires `Authorization: Bearer <key>` with one of keys; a no-op when keys is empty. */
export function apiKeyAuth(keys: string[]): RequestHandler {
  if (keys.length === 0) return (_req, _res, next) => next();
  const digests = keys.map((k) => crypto.createHash("sha256").update(k).digest());
  const p = new passport.Passport();
  p.use(
    new BearerStrategy((token, done) => {
      const d = crypto.createHash("sha256").update(token).digest();
      done(null, digests.some((k) => crypto.timingSafeEqual(k, d)) ? { key: token } : false);
    }),
  );
  const mw = p.initialize();
  return (req: Request, res: Response, next: NextFunction) => {
    mw(req, res, () =>
      p.authenticate("bearer", { session: false }, (err: unknown, user: unknown) => {
        if (err) return next(err);
        if (!user) {
          res.set("WWW-Authenticate", 'Bearer realm="loraserve"');
          return sendError(req, res, new HttpError(401, "unauthorized", "missing or invalid API key: send Authorization: Bearer <key>", "invalid_api_key"));
        }
        next();
      })(req, res, next),
    );
  };
}

/** Per caller (API key, else address) requests per minute; a no-op when rpm is 0. */
export function rateLimiter(rpm: number): RequestHandler {
  if (rpm <= 0) return (_req, _res, next) => next();
  return rateLimit({
    windowMs: 60_000,
    limit: rpm,
    standardHeaders: "draft-7",
    legacyHeaders: false,
    keyGenerator: (req) => {
      const m = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? "");
      // Without a key, by address; IPv6 addresses by their /56, so one host cannot rotate through its own range.
      return m ? `key:${crypto.createHash("sha256").update(m[1]).digest("hex")}` : `ip:${ipKeyGenerator(req.ip ?? "")}`;
    },
    handler: (req, res, _next, options) => {
      const retry = Math.ceil(options.windowMs / 1000);
      sendError(req, res, new OverloadedError(`rate limit of ${rpm} requests per minute reached for this caller`, retry));
    },
  });
}
