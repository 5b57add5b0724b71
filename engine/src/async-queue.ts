// A push-based async iterable: producers push values, end or fail it; one consumer iterates.
// Used to hand generation events from the engine loop to each request.

export class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiters: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }[] = [];
  private done = false;
  private error: unknown;
  private failed = false;

  constructor(private readonly onReturn?: () => void) {}

  push(v: T): void {
    if (this.done) return;
    const w = this.waiters.shift();
    if (w) w.resolve({ value: v, done: false });
    else this.items.push(v);
  }

  end(): void {
    if (this.done) return;
    this.done = true;
    for (const w of this.waiters.splice(0)) w.resolve({ value: undefined, done: true });
  }

  fail(e: unknown): void {
    if (this.done) return;
    this.done = true;
    this.failed = true;
    this.error = e;
    for (const w of this.waiters.splice(0)) w.reject(e);
  }

  get closed(): boolean {
    return this.done;
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        if (this.items.length > 0) return Promise.resolve({ value: this.items.shift()!, done: false });
        if (this.failed) return Promise.reject(this.error);
        if (this.done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
      },
      return: () => {
        // The consumer stopped early (break, client gone): tell the producer.
        if (!this.done) this.onReturn?.();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
