// Turns a growing generated text into safe-to-stream pieces: text that could still become a stop sequence is
// held back; a completed stop sequence ends the text just before it. Works on strings, not tokens.

export class StopMatcher {
  private text = "";
  private emitted = 0;
  private readonly maxLen: number;

  constructor(private readonly stops: readonly string[]) {
    this.maxLen = stops.reduce((m, s) => Math.max(m, s.length), 0);
  }

  /** Appends decoded text; returns the newly safe text and the stop sequence hit, if any. */
  push(delta: string): { text: string; stop?: string } {
    const before = this.text.length;
    this.text += delta;
    if (this.stops.length === 0) return { text: this.take(this.text.length) };
    const from = Math.max(0, before - this.maxLen + 1);
    let hit: { at: number; stop: string } | undefined;
    for (const s of this.stops) {
      const at = this.text.indexOf(s, from);
      if (at >= 0 && (!hit || at < hit.at)) hit = { at, stop: s };
    }
    if (hit) {
      this.text = this.text.slice(0, hit.at);
      return { text: this.take(this.text.length), stop: hit.stop };
    }
    return { text: this.take(this.text.length - this.heldBack()) };
  }

  /** Everything not yet emitted (at the end of generation). */
  flush(): string {
    return this.take(this.text.length);
  }

  get fullText(): string {
    return this.text;
  }

  /** Length of the longest suffix of the text that is a proper prefix of some stop sequence. */
  private heldBack(): number {
    const t = this.text;
    for (let n = Math.min(this.maxLen - 1, t.length); n > 0; n--) {
      const suffix = t.slice(t.length - n);
      if (this.stops.some((s) => s.startsWith(suffix))) return n;
    }
    return 0;
  }

  private take(end: number): string {
    if (end <= this.emitted) return "";
    const s = this.text.slice(this.emitted, end);
    this.emitted = end;
    return s;
  }
}
