# Developer shortcuts; the README's commands (npm install, npm start, npm test) are the supported path.
.PHONY: build test bench bench-quick lint demo-model tiny-models clean cuda

build:
	npx node-gyp build -j max
	npx tsc -p tsconfig.build.json

test:
	npm test

bench:
	npm run bench

bench-quick:
	npm run bench -- --quick

lint:
	npx tsc -p tsconfig.json --noEmit

# The native GPU check binary (build/gpu-check/gpu_check; nvcc + g++, no Node); scripts/gpu-check.sh runs it.
cuda:
	bash scripts/gpu-check.sh --build-only

tiny-models:
	npx tsx scripts/tiny-models.ts

demo-model:
	/usr/bin/python3 scripts/demo-model/train.py --out models/demo

clean:
	rm -rf build dist .cache/tiny-models
