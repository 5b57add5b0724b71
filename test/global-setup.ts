// Runs once before the test workers: writes the tiny fixture models so that parallel suites never race on them.
import { ensureTinyModels } from "../scripts/tiny-models.js";

export default function setup(): void {
  ensureTinyModels();
}
