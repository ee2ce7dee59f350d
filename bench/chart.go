package bench

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"slices"
	"strconv"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

var (
	colLockstep = color.RGBA{0x1f, 0x5f, 0xb4, 0xff}
	colSuccess  = color.RGBA{0x2c, 0xa0, 0x2c, 0xff}
	colRef      = color.RGBA{0xe0, 0x70, 0x0e, 0xff}
	colStepwise = color.RGBA{0x94, 0x67, 0xbd, 0xff}
	colAxis     = color.RGBA{0x33, 0x33, 0x33, 0xff}
	colGrid     = color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
	colText     = color.RGBA{0x11, 0x11, 0x11, 0xff}
)

// series is one line of a panel.
type series struct {
	name  string
	color color.RGBA
	ys    []float64 // NaN: no point
}

type panel struct {
	title  string
	series []series
}

// Chart draws throughput and p99 latency against concurrency, lockstep
// beside the references (pipelined, and one statement per round trip), as a
// PNG.
func Chart(rep *Report) ([]byte, error) {
	const w, h = 1100, 480
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)

	xs := make([]string, len(rep.Levels))
	rate := series{name: "lockstep req/s", color: colLockstep}
	if rep.Config.Storm {
		rate.name = "lockstep webhooks/s"
	}
	refRate := series{name: "pgbench tx/s, pipelined as lockstep (reference)", color: colRef}
	stepRate := series{name: "pgbench tx/s, one statement per round trip", color: colStepwise}
	p99 := series{name: "lockstep webhook p99", color: colLockstep}
	succP99 := series{name: "lockstep success p99", color: colSuccess}
	refP99 := series{name: "pgbench p99, pipelined as lockstep (reference)", color: colRef}
	stepP99 := series{name: "pgbench p99, one statement per round trip", color: colStepwise}
	hasSuccess := false
	for i, l := range rep.Levels {
		xs[i] = strconv.Itoa(l.Concurrency)
		r := l.RPS
		if rep.Config.Storm {
			r = l.WebhookRPS
		}
		rate.ys = append(rate.ys, r)
		p99.ys = append(p99.ys, msFloat(l.Webhook.P99, l.Webhook.N))
		succP99.ys = append(succP99.ys, msFloat(l.Success.P99, l.Success.N))
		hasSuccess = hasSuccess || l.Success.N > 0
	}
	left := panel{title: "throughput (per second)", series: []series{rate}}
	right := panel{title: "p99 latency (ms)", series: []series{p99}}
	if hasSuccess {
		right.series = append(right.series, succP99)
	}
	if refSeries(rep.Levels, func(l *Level) *Reference { return l.Reference }, &refRate, &refP99) {
		left.series = append(left.series, refRate)
		right.series = append(right.series, refP99)
	}
	if refSeries(rep.Levels, func(l *Level) *Reference { return l.Stepwise }, &stepRate, &stepP99) {
		left.series = append(left.series, stepRate)
		right.series = append(right.series, stepP99)
	}

	title := fmt.Sprintf("lockstep bench, %s: %s", rep.Config.Mode(), chartSubtitle(rep))
	drawText(img, title, 20, 22, colText)
	legend := max(len(left.series), len(right.series))
	drawPanel(img, image.Rect(10, 36, w/2-5, h-5), left, xs, legend)
	drawPanel(img, image.Rect(w/2+5, 36, w-10, h-5), right, xs, legend)

	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// refSeries fills a reference's throughput and p99 series, a point per
// level (NaN where it did not run), and says whether it ran at any level.
func refSeries(levels []Level, of func(*Level) *Reference, rate, p99 *series) bool {
	ran := false
	for i := range levels {
		r := of(&levels[i])
		if r == nil {
			rate.ys = append(rate.ys, math.NaN())
			p99.ys = append(p99.ys, math.NaN())
			continue
		}
		ran = true
		rate.ys = append(rate.ys, r.TPS)
		p99.ys = append(p99.ys, msFloat(r.Latencies.P99, r.Latencies.N))
	}
	return ran
}

func chartSubtitle(rep *Report) string {
	switch rep.Config.Mode() {
	case "hot":
		return "one hot customer"
	case "storm":
		return "webhooks on one customer, success calls on the others"
	}
	return fmt.Sprintf("%d customers", rep.Config.Customers)
}

func msFloat(d interface{ Nanoseconds() int64 }, n int) float64 {
	if n == 0 {
		return math.NaN()
	}
	return float64(d.Nanoseconds()) / 1e6
}

// drawPanel draws a panel in r, with room above the plot for a legend of
// legendRows lines (the most of any panel, so that side by side plots line up).
func drawPanel(img *image.RGBA, r image.Rectangle, p panel, xs []string, legendRows int) {
	const padLeft, padRight, padBottom = 62, 16, 40
	padTop := max(58, 31+13*legendRows)
	plot := image.Rect(r.Min.X+padLeft, r.Min.Y+padTop, r.Max.X-padRight, r.Max.Y-padBottom)
	drawText(img, p.title, r.Min.X+padLeft, r.Min.Y+14, colText)
	// Legend, one entry per line under the title.
	for i, s := range p.series {
		y := r.Min.Y + 30 + 13*i
		x := r.Min.X + padLeft
		thickLine(img, float64(x), float64(y-4), float64(x+22), float64(y-4), s.color)
		disc(img, float64(x+11), float64(y-4), 3, s.color)
		drawText(img, s.name, x+28, y, colText)
	}

	top := 0.0
	for _, s := range p.series {
		for _, y := range s.ys {
			if !math.IsNaN(y) && y > top {
				top = y
			}
		}
	}
	step := niceStep(top / 5)
	top = math.Max(step, math.Ceil(top*1.08/step)*step)
	ypix := func(v float64) float64 {
		return float64(plot.Max.Y) - v/top*float64(plot.Dy())
	}
	for v := 0.0; v <= top+step/2; v += step {
		y := int(math.Round(ypix(v)))
		hline(img, plot.Min.X, plot.Max.X, y, colGrid)
		label := formatTick(v, step)
		drawText(img, label, plot.Min.X-8-7*len(label), y+4, colAxis)
	}
	n := len(xs)
	xpix := func(i int) float64 {
		return float64(plot.Min.X) + (float64(i)+0.5)*float64(plot.Dx())/float64(max(n, 1))
	}
	for i, x := range xs {
		px := int(math.Round(xpix(i)))
		vline(img, px, plot.Max.Y, plot.Max.Y+4, colAxis)
		drawText(img, x, px-7*len(x)/2, plot.Max.Y+17, colAxis)
	}
	drawText(img, "concurrency", plot.Min.X+plot.Dx()/2-38, plot.Max.Y+33, colAxis)
	hline(img, plot.Min.X, plot.Max.X, plot.Max.Y, colAxis)
	vline(img, plot.Min.X, plot.Min.Y, plot.Max.Y, colAxis)

	for _, s := range p.series {
		prevX, prevY, have := 0.0, 0.0, false
		for i, v := range s.ys {
			if math.IsNaN(v) {
				have = false
				continue
			}
			x, y := xpix(i), ypix(v)
			if have {
				thickLine(img, prevX, prevY, x, y, s.color)
			}
			disc(img, x, y, 3.5, s.color)
			prevX, prevY, have = x, y, true
		}
	}
	// Values next to the points, moved apart where points lie close.
	for i := range xs {
		var labels []valueLabel
		for _, s := range p.series {
			if i < len(s.ys) && !math.IsNaN(s.ys[i]) {
				labels = append(labels, valueLabel{text: formatValue(s.ys[i]), y: int(ypix(s.ys[i])) - 6, color: s.color})
			}
		}
		x := int(xpix(i)) + 6
		for _, l := range spreadLabels(labels, 13) {
			draw.Draw(img, image.Rect(x-1, l.y-11, x+7*len(l.text)+1, l.y+3), image.NewUniform(color.NRGBA{255, 255, 255, 210}), image.Point{}, draw.Over)
			drawText(img, l.text, x, l.y, l.color)
		}
	}
}

// valueLabel is a value written next to its point; y is its baseline.
type valueLabel struct {
	text  string
	y     int
	color color.RGBA
}

// spreadLabels moves the labels of one concurrency apart, top to bottom, so
// that baselines are at least gap pixels apart and none covers another.
func spreadLabels(labels []valueLabel, gap int) []valueLabel {
	slices.SortStableFunc(labels, func(a, b valueLabel) int { return a.y - b.y })
	for i := 1; i < len(labels); i++ {
		labels[i].y = max(labels[i].y, labels[i-1].y+gap)
	}
	return labels
}

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

func formatTick(v, step float64) string {
	if step >= 1 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	decimals := int(math.Ceil(-math.Log10(step)))
	return strconv.FormatFloat(v, 'f', decimals, 64)
}

func formatValue(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func drawText(img *image.RGBA, s string, x, y int, c color.Color) {
	d := &font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) {
	for x := x0; x <= x1; x++ {
		img.Set(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) {
	for y := y0; y <= y1; y++ {
		img.Set(x, y, c)
	}
}

// thickLine draws a 2.5-pixel line by stamping small discs along it.
func thickLine(img *image.RGBA, x0, y0, x1, y1 float64, c color.Color) {
	steps := int(math.Max(math.Abs(x1-x0), math.Abs(y1-y0))*2) + 1
	for i := 0; i <= steps; i++ {
		t := float64(i) / float64(steps)
		disc(img, x0+(x1-x0)*t, y0+(y1-y0)*t, 1.25, c)
	}
}

func disc(img *image.RGBA, cx, cy, r float64, c color.Color) {
	for y := int(cy - r - 1); y <= int(cy+r+1); y++ {
		for x := int(cx - r - 1); x <= int(cx+r+1); x++ {
			dx, dy := float64(x)+0.5-cx, float64(y)+0.5-cy
			if dx*dx+dy*dy <= r*r {
				img.Set(x, y, c)
			}
		}
	}
}
