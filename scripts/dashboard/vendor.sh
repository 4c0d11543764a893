#!/usr/bin/env bash
# Vendors the dashboard's two packages from the npm registry at pinned versions into
# crates/gpumesh-indexer/assets/vendor/, where the indexer's binary embeds them (users run
# it offline: nothing is loaded from a CDN). Run it to update them; commit the result.
#   world-atlas: Natural Earth's 1:110m country shapes as TopoJSON (public domain data).
#   topojson-client: turns TopoJSON into GeoJSON in the browser (ISC licence).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=crates/gpumesh-indexer/assets/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent world-atlas@2.0.2 topojson-client@3.1.0 >/dev/null)
tar -xzf "$work"/world-atlas-2.0.2.tgz -C "$work" package/countries-110m.json package/LICENSE
cp "$work"/package/countries-110m.json "$out"/countries-110m.json
cp "$work"/package/LICENSE "$out"/world-atlas.LICENSE
rm -rf "$work"/package
tar -xzf "$work"/topojson-client-3.1.0.tgz -C "$work" package/dist/topojson-client.min.js package/LICENSE
cp "$work"/package/dist/topojson-client.min.js "$out"/topojson-client.min.js
cp "$work"/package/LICENSE "$out"/topojson-client.LICENSE
sha256sum "$out"/countries-110m.json "$out"/topojson-client.min.js
