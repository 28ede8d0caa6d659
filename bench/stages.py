#!/usr/bin/env python3
"""stages.py METRICS_FILE...: the store's accept stage histograms, in brief.

Each file is a `/metrics` scrape of Outpost taken at the end of a bench run (compare.sh
and latency.sh save one as `metrics.txt` in the run's directory). Prints, per file and
stage (wait for a batch, write, fsync), the count, the mean, and the bucket bounds
holding the median and the 99th percentile, then the mean batch size.
"""
import re
import sys

SAMPLE = re.compile(r'^(\w+?)(_bucket|_sum|_count)?(?:\{(.*)\})? (\S+)$')


def parse(path):
    hist = {}
    plain = {}
    for line in open(path):
        m = SAMPLE.match(line.strip())
        if not m or line.startswith('#'):
            continue
        name, part, labels, value = m.groups()
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels or ''))
        if part is None:
            plain[name] = float(value)
            continue
        key = (name, labels.get('stage', ''))
        h = hist.setdefault(key, {'buckets': [], 'sum': 0.0, 'count': 0.0})
        if part == '_bucket':
            le = labels['le']
            h['buckets'].append((float('inf') if le == '+Inf' else float(le), float(value)))
        elif part == '_sum':
            h['sum'] = float(value)
        else:
            h['count'] = float(value)
    return hist, plain


def quantile_bound(h, q):
    target = q * h['count']
    for bound, cumulative in sorted(h['buckets']):
        if cumulative >= target:
            return bound
    return float('inf')


def ms(seconds):
    return '+Inf' if seconds == float('inf') else f'{seconds * 1000:.3g}'


def main(paths):
    if not paths:
        sys.exit(__doc__)
    print('| run | stage | count | mean ms | p50 <= ms | p99 <= ms |')
    print('|---|---|---|---|---|---|')
    for path in paths:
        hist, _ = parse(path)
        for stage in ('wait', 'write', 'fsync'):
            h = hist.get(('outpost_accept_stage_seconds', stage))
            if not h or not h['count']:
                continue
            print(f"| {path} | {stage} | {h['count']:.0f} | {ms(h['sum'] / h['count'])} "
                  f"| {ms(quantile_bound(h, 0.5))} | {ms(quantile_bound(h, 0.99))} |")
        b = hist.get(('outpost_store_batch_writes', ''))
        if b and b['count']:
            print(f"| {path} | batch | {b['count']:.0f} batches | mean {b['sum'] / b['count']:.1f} writes "
                  f"| p50 <= {quantile_bound(b, 0.5):g} | |")


if __name__ == '__main__':
    main(sys.argv[1:])
