package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// Sample is one Prometheus series and its value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Scrape is a parsed /metrics page.
type Scrape []Sample

// ParseMetrics reads the Prometheus text exposition format: one
// `name{label="value",...} value` per line, # lines ignored.
func ParseMetrics(r io.Reader) (Scrape, error) {
	var out Scrape
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSampleLine(line)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

func parseSampleLine(line string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	rest := line
	if i := strings.IndexAny(rest, "{ "); i < 0 {
		return s, fmt.Errorf("metrics: no value in %q", line)
	} else {
		s.Name, rest = rest[:i], rest[i:]
	}
	if strings.HasPrefix(rest, "{") {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, " ,")
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq < 0 || len(rest) < eq+2 || rest[eq+1] != '"' {
				return s, fmt.Errorf("metrics: bad labels in %q", line)
			}
			key := strings.TrimSpace(rest[:eq])
			rest = rest[eq+2:]
			var val strings.Builder
			closed := false
			for i := 0; i < len(rest); i++ {
				c := rest[i]
				if c == '\\' && i+1 < len(rest) {
					i++
					switch rest[i] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(rest[i])
					}
					continue
				}
				if c == '"' {
					rest = rest[i+1:]
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return s, fmt.Errorf("metrics: unterminated label in %q", line)
			}
			s.Labels[key] = val.String()
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return s, fmt.Errorf("metrics: no value in %q", line)
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, fmt.Errorf("metrics: bad value in %q", line)
	}
	s.Value = v
	return s, nil
}

// Sum adds the values of the series called name whose labels include match.
func (sc Scrape) Sum(name string, match map[string]string) float64 {
	var total float64
	for _, s := range sc {
		if s.Name == name && labelsMatch(s.Labels, match) {
			total += s.Value
		}
	}
	return total
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// Bucket is one cumulative histogram bucket: Count observations <= LE.
type Bucket struct {
	LE    float64
	Count float64
}

// Histogram returns the cumulative buckets of histogram name (the series
// name_bucket), summed over every series whose labels include match, in
// order of le, +Inf last.
func (sc Scrape) Histogram(name string, match map[string]string) []Bucket {
	byLE := map[float64]float64{}
	for _, s := range sc {
		if s.Name != name+"_bucket" || !labelsMatch(s.Labels, match) {
			continue
		}
		le, err := strconv.ParseFloat(s.Labels["le"], 64)
		if err != nil {
			continue
		}
		byLE[le] += s.Value
	}
	out := make([]Bucket, 0, len(byLE))
	for le, n := range byLE {
		out = append(out, Bucket{LE: le, Count: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LE < out[j].LE })
	return out
}

// DeltaBuckets returns after minus before, bucket by bucket (a bucket
// missing before counts from zero).
func DeltaBuckets(before, after []Bucket) []Bucket {
	prev := map[float64]float64{}
	for _, b := range before {
		prev[b.LE] = b.Count
	}
	out := make([]Bucket, len(after))
	for i, b := range after {
		out[i] = Bucket{LE: b.LE, Count: b.Count - prev[b.LE]}
	}
	return out
}

// HistogramQuantile estimates the q-quantile (0..1) of cumulative buckets
// the way Prometheus's histogram_quantile does: find the bucket holding the
// rank, interpolate linearly inside it (from 0 for the first bucket). A rank
// in the +Inf bucket returns the largest finite bound. It returns NaN when
// the buckets hold no observation.
func HistogramQuantile(q float64, buckets []Bucket) float64 {
	if len(buckets) == 0 {
		return math.NaN()
	}
	total := buckets[len(buckets)-1].Count
	if !math.IsInf(buckets[len(buckets)-1].LE, 1) || total <= 0 {
		return math.NaN()
	}
	rank := q * total
	for i, b := range buckets {
		if b.Count < rank {
			continue
		}
		if math.IsInf(b.LE, 1) {
			if i == 0 {
				return math.NaN()
			}
			return buckets[i-1].LE
		}
		lower, below := 0.0, 0.0
		if i > 0 {
			lower, below = buckets[i-1].LE, buckets[i-1].Count
		}
		if b.Count == below {
			return b.LE
		}
		return lower + (b.LE-lower)*(rank-below)/(b.Count-below)
	}
	return buckets[len(buckets)-2].LE
}

// Count returns the number of observations in cumulative buckets.
func Count(buckets []Bucket) float64 {
	if len(buckets) == 0 {
		return 0
	}
	return buckets[len(buckets)-1].Count
}

// scrapeMetrics fetches and parses base/metrics.
func scrapeMetrics(ctx context.Context, client *http.Client, base string) (Scrape, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	res, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s/metrics: %w", base, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s/metrics: status %d", base, res.StatusCode)
	}
	return ParseMetrics(res.Body)
}
