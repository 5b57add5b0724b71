// EBNF for the string formats we constrain (date-time, date, time, uuid, email), each accepting only
// strings that ajv-formats' "full" validators accept. It does not decide which formats a schema may use.
import type { RuleSet } from "./ebnf.js";

export const SUPPORTED_FORMATS = ["date-time", "date", "time", "uuid", "email"] as const;
export type SupportedFormat = (typeof SUPPORTED_FORMATS)[number];

/** Shortest and longest decoded length each format produces (Infinity: unbounded). */
export const FORMAT_LENGTHS: Record<SupportedFormat, readonly [number, number]> = {
  date: [10, 10],
  time: [9, 24],
  "date-time": [20, 35],
  uuid: [36, 36],
  email: [5, Infinity],
};

export function isSupportedFormat(format: string): format is SupportedFormat {
  return (SUPPORTED_FORMATS as readonly string[]).includes(format);
}

const D = "[0-9]";
const HEX = "[0-9a-fA-F]";

function dateRules(rules: RuleSet): string {
  return rules.memo("format-body:date", () => buildDate(rules));
}

function buildDate(rules: RuleSet): string {
  // Day ranges per month, and 29 February only in leap years (the same test as ajv-formats).
  const day28 = '("0" [1-9] | "1" [0-9] | "2" [0-8])';
  const day30 = `(${day28} | "29" | "30")`;
  const day31 = `(${day30} | "31")`;
  const leapYear = rules.rule(
    "fmt_leap_year",
    `${D} ${D} ("0" [48] | [2468] [048] | [13579] [26]) | ("0" [048] | [2468] [048] | [13579] [26]) "00"`,
  );
  return rules.rule(
    "fmt_date",
    `${D} ${D} ${D} ${D} "-" (("01" | "03" | "05" | "07" | "08" | "10" | "12") "-" ${day31} | ("04" | "06" | "09" | "11") "-" ${day30} | "02" "-" ${day28}) | ${leapYear} "-02-29"`,
  );
}

function timeRules(rules: RuleSet): string {
  return rules.memo("format-body:time", () => buildTime(rules));
}

function buildTime(rules: RuleSet): string {
  const hour = '([01] [0-9] | "2" [0-3])';
  const minute = `[0-5] ${D}`;
  return rules.rule(
    "fmt_time",
    `${hour} ":" ${minute} ":" ${minute} ("." ${D} ${D}{0,8})? ("Z" | [+\\-] ${hour} ":" ${minute})`,
  );
}

function emailRules(rules: RuleSet): string {
  // ajv-formats full: atext+ ("." atext+)* "@" (label ".")+ label, labels alnum (alnum|-)* alnum.
  const atext = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~\\-]";
  const alnum = "[A-Za-z0-9]";
  const local = rules.reserve("fmt_email_local");
  const localMore = rules.reserve("fmt_email_local_more");
  const label0 = rules.reserve("fmt_email_label0");
  const label0In = rules.reserve("fmt_email_label0_in");
  const label0Hyphen = rules.reserve("fmt_email_label0_hyphen");
  const label1 = rules.reserve("fmt_email_label1");
  const label1In = rules.reserve("fmt_email_label1_in");
  const label1Hyphen = rules.reserve("fmt_email_label1_hyphen");
  rules.define(local, `${atext} ${localMore}`);
  rules.define(localMore, `${atext} ${localMore} | "." ${local} | "@" ${label0}`);
  rules.define(label0, `${alnum} ${label0In}`);
  rules.define(label0In, `${alnum} ${label0In} | "-" ${label0Hyphen} | "." ${label1}`);
  rules.define(label0Hyphen, `${alnum} ${label0In} | "-" ${label0Hyphen}`);
  rules.define(label1, `${alnum} ${label1In}`);
  rules.define(label1In, `${alnum} ${label1In} | "-" ${label1Hyphen} | "." ${label1} | "\\""`);
  rules.define(label1Hyphen, `${alnum} ${label1In} | "-" ${label1Hyphen}`);
  return rules.rule("fmt_email", `"\\"" ${local}`);
}

/** The rule for a JSON string (quotes included) in the given format. */
export function formatString(rules: RuleSet, format: SupportedFormat): string {
  return rules.memo(`format:${format}`, () => buildFormatString(rules, format));
}

function buildFormatString(rules: RuleSet, format: SupportedFormat): string {
  switch (format) {
    case "date":
      return rules.rule("str_date", `"\\"" ${dateRules(rules)} "\\""`);
    case "time":
      return rules.rule("str_time", `"\\"" ${timeRules(rules)} "\\""`);
    case "date-time":
      return rules.rule("str_date_time", `"\\"" ${dateRules(rules)} "T" ${timeRules(rules)} "\\""`);
    case "uuid":
      return rules.rule("str_uuid", `"\\"" ${HEX}{8} "-" ${HEX}{4} "-" ${HEX}{4} "-" ${HEX}{4} "-" ${HEX}{12} "\\""`);
    case "email":
      return emailRules(rules);
  }
}
