# Developer shortcuts; the README's commands (npm install, npm start, npm test) are the supported path.
.PHONY: build test bench bench-quick lint demo-model tiny-models clean

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

tiny-models:
	npx tsx scripts/tiny-models.ts

demo-model:
	python3 scripts/demo-model/train.py --out models/demo

clean:
	rm -rf build dist .cache/tiny-models
