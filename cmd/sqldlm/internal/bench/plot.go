package bench

import (
	"bytes"
	"fmt"
	"image/color"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// implColors are the bar colours of the implementations.
var implColors = map[string]color.Color{
	ImplSqldlm:    color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	ImplTwoCommit: color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	ImplAdvisory:  color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	PeerEtcd:      color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
}

// WritePlot draws the report's pairs/s as a PNG: one panel per workload,
// in each a group of side-by-side bars (one per implementation) per worker
// count.
func (r *Report) WritePlot(w io.Writer) error { return WritePlots(w, r) }

// WritePlots draws several reports (of different dialects, say) as one
// PNG, one row of panels per report.
func WritePlots(w io.Writer, reports ...*Report) error {
	var plots [][]*plot.Plot
	cols := 0
	for _, r := range reports {
		var workloads []string
		for _, x := range r.Rows {
			if !slices.Contains(workloads, x.Workload) {
				workloads = append(workloads, x.Workload)
			}
		}
		var row []*plot.Plot
		for _, wl := range workloads {
			p, err := r.panel(wl)
			if err != nil {
				return err
			}
			if len(reports) > 1 {
				p.Title.Text = r.Dialect + ": " + wl
			}
			row = append(row, p)
		}
		if len(row) > 0 {
			plots = append(plots, row)
			cols = max(cols, len(row))
		}
	}
	if len(plots) == 0 {
		return fmt.Errorf("nothing to plot: no report has rows")
	}
	for i := range plots {
		for len(plots[i]) < cols {
			plots[i] = append(plots[i], nil)
		}
	}
	const panelW, panelH, lineH = 4.6 * vg.Inch, 3.6 * vg.Inch, 0.3 * vg.Inch
	r := reports[0]
	what := r.Dialect + " (" + r.Host + ")"
	if len(reports) > 1 {
		var ds []string
		for _, x := range reports {
			ds = append(ds, x.Dialect)
		}
		what = strings.Join(ds, ", ")
	}
	title := fmt.Sprintf("sqldlm bench, %s: acquire+release pairs/s, median of %d run(s) of %s per bar", what, r.Runs, secs(r.DurationSeconds))
	font := plot.DefaultFont
	font.Size = 14
	sty := draw.TextStyle{Color: color.Black, Font: font, XAlign: draw.XCenter, YAlign: draw.YTop, Handler: plot.DefaultTextHandler}
	width := panelW * vg.Length(cols)
	lines := titleLines(sty, title, width-0.2*vg.Inch)
	titleH := 0.15*vg.Inch + lineH*vg.Length(len(lines))
	img := vgimg.NewWith(vgimg.UseWH(width, panelH*vg.Length(len(plots))+titleH), vgimg.UseDPI(96))
	dc := draw.New(img)
	for i, line := range lines {
		dc.FillText(sty, vg.Point{X: dc.Center().X, Y: dc.Max.Y - 0.12*vg.Inch - lineH*vg.Length(i)}, line)
	}
	body := draw.Crop(dc, 0, 0, 0, -titleH)
	tiles := draw.Tiles{Rows: len(plots), Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(plots, tiles, body)
	for i := range plots {
		for j := range plots[i] {
			if plots[i][j] != nil {
				plots[i][j].Draw(canvases[i][j])
			}
		}
	}
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return err
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// titleLines breaks title into lines no wider than width in sty, at ", "
// (a single word wider than width stays whole), so that a narrow chart,
// one panel wide, shows its whole title.
func titleLines(sty draw.TextStyle, title string, width vg.Length) []string {
	var lines []string
	line := ""
	for _, part := range strings.SplitAfter(title, ", ") {
		if line != "" && sty.Width(strings.TrimSpace(line+part)) > width {
			lines = append(lines, strings.TrimSpace(line))
			line = ""
		}
		line += part
	}
	return append(lines, strings.TrimSpace(line))
}

// panel is one workload's bar chart.
func (r *Report) panel(wl string) (*plot.Plot, error) {
	var workers []int
	var impls []string
	for _, x := range r.Rows {
		if x.Workload != wl {
			continue
		}
		if !slices.Contains(workers, x.Workers) {
			workers = append(workers, x.Workers)
		}
		if !slices.Contains(impls, x.Impl) {
			impls = append(impls, x.Impl)
		}
	}
	slices.Sort(workers)
	slices.SortFunc(impls, func(a, b string) int { return slices.Index(rowOrder, a) - slices.Index(rowOrder, b) })
	p := plot.New()
	p.Title.Text = wl
	p.Y.Label.Text = "pairs/s"
	p.X.Label.Text = "workers"
	p.Y.Min = 0
	p.Y.Tick.Marker = thousandsTicks{}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	const barW = 22
	top := 0.0
	for k, impl := range impls {
		vals := make(plotter.Values, len(workers))
		for i, w := range workers {
			for _, x := range r.Rows {
				if x.Workload == wl && x.Workers == w && x.Impl == impl {
					vals[i] = x.PairsPerSecond
					top = max(top, x.PairsPerSecond)
				}
			}
		}
		bars, err := plotter.NewBarChart(vals, vg.Points(barW))
		if err != nil {
			return nil, err
		}
		bars.Color = implColors[impl]
		bars.LineStyle.Width = 0
		bars.Offset = vg.Points(barW * (float64(k) - float64(len(impls)-1)/2))
		p.Add(bars)
		p.Legend.Add(impl, bars)
	}
	p.Y.Max = top * 1.4 // room for the legend
	p.X.Min, p.X.Max = -0.5, float64(len(workers))-0.5
	names := make([]string, len(workers))
	for i, w := range workers {
		names[i] = strconv.Itoa(w)
	}
	p.NominalX(names...)
	return p, nil
}

// thousandsTicks are the default ticks labelled with thousands separators.
type thousandsTicks struct{}

func (thousandsTicks) Ticks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = thousands(math.Round(ticks[i].Value))
		}
	}
	return ticks
}
