#!/usr/bin/env bash
# Makes docs/images/report.png, the README's screenshot of `runner report`, with the
# project's own commands: jobs/nightly.yaml submitted and scheduled, six nights rehearsed
# with `runner schedule run-due --now … --work` (the built-in model, 5 samples per job, so
# the distribution test has a p-value), the backend updated before night 4 (the model's v2
# variant behind the same endpoint name), then `runner report` and headless Chromium.
# Run from the repository root: bash docs/report-screenshot.sh
set -euo pipefail
root="$(pwd)"
runner="${RUNNER:-$root/.venv/bin/runner}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
export RUNNER_DATABASE_URL="sqlite:///$work/runner.db"
{ grep -v '^  on_drift:' "$root/jobs/nightly.yaml"; echo 'samples: 5'; } > nightly.yaml
"$runner" submit nightly.yaml >/dev/null
"$runner" work --burst >/dev/null
for night in 1 2 3 4 5 6; do
    if [ "$night" -ge 4 ]; then  # the provider's backend update
        printf '[endpoints.local]\ntype = "local"\nvariant = "v2"\n' > runner.toml
    fi
    "$runner" schedule run-due --now "2030-01-0${night}T02:00:00Z" --work >/dev/null
done
"$runner" report nightly -o report.html
chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir="$work/profile" \
    --window-size=1280,1500 --virtual-time-budget=20000 --hide-scrollbars \
    --screenshot="$root/docs/images/report.png" "file://$work/report.html" 2>/dev/null
echo "wrote docs/images/report.png"
