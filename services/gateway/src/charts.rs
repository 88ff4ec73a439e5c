//! Charts as SVG drawn on the server: horizontal bars, stacked columns and a line. No script and no chart library,
//! so a page shows its charts without JavaScript, prints them sharp, and a screen reader gets each chart's title and
//! the table beside it. The colours differ in lightness as well as hue, and every bar carries its number in text, so
//! a black-and-white print still reads.
//!
//! Domain-free: labels and numbers in, markup out.

use std::fmt::Write as _;

/// The series colours: dark blue, light orange, mid green, light purple, apart in grey too.
const COLOURS: [&str; 4] = ["#1d4e89", "#f0a35e", "#2f8b57", "#c9a0dc"];

const WIDTH: f64 = 720.0;
const FONT: &str = "font-family=\"Noto Sans CJK SC, Microsoft YaHei, sans-serif\" font-size=\"12\"";

/// Escapes text for SVG content and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(character),
        }
    }
    escaped
}

/// One bar of a horizontal bar chart.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// What is written at the bar's end (the value, a percentage, both).
    pub text: String,
}

/// Horizontal bars, one a row, in the order given, scaled to `max` (the largest value when `max` is 0).
pub fn bars(id: &str, title: &str, bars: &[Bar], max: f64) -> String {
    let row = 26.0;
    let label_width = 190.0;
    let text_width = 120.0;
    let height = row * bars.len().max(1) as f64 + 8.0;
    let max = if max > 0.0 { max } else { bars.iter().map(|bar| bar.value).fold(0.0, f64::max) };
    let span = WIDTH - label_width - text_width;
    let mut svg = open(id, title, height);
    if bars.is_empty() {
        let _ = write!(svg, "<text x=\"8\" y=\"20\" {FONT}>暂无数据</text>");
    }
    for (index, bar) in bars.iter().enumerate() {
        let y = 4.0 + row * index as f64;
        let length = if max > 0.0 { (bar.value / max).clamp(0.0, 1.0) * span } else { 0.0 };
        let _ = write!(
            svg,
            "<text x=\"{x}\" y=\"{ty}\" text-anchor=\"end\" {FONT}>{label}</text>\
             <rect x=\"{label_width}\" y=\"{y}\" width=\"{length:.1}\" height=\"{h}\" fill=\"{colour}\"><title>{label}：{text}</title></rect>\
             <text x=\"{tx:.1}\" y=\"{ty}\" {FONT}>{text}</text>",
            x = label_width - 6.0,
            ty = y + 15.0,
            label = escape(&bar.label),
            h = row - 8.0,
            colour = COLOURS[0],
            tx = label_width + length + 6.0,
            text = escape(&bar.text),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One column of a stacked column chart: a label under it and one value per series.
#[derive(Debug, Clone)]
pub struct Column {
    pub label: String,
    pub values: Vec<f64>,
}

/// Stacked columns over time or categories, with a legend naming `series`, a value axis, and only as many labels
/// under the columns as fit without overlapping.
pub fn columns(id: &str, title: &str, series: &[&str], columns: &[Column]) -> String {
    let (left, top, bottom, legend) = (56.0, 28.0, 40.0, 20.0);
    let plot_height = 200.0;
    let height = top + plot_height + bottom;
    let plot_width = WIDTH - left - 12.0;
    let max = columns.iter().map(|column| column.values.iter().sum::<f64>()).fold(0.0, f64::max);
    let scale_max = axis_top(max);
    let mut svg = open(id, title, height);
    legend_row(&mut svg, series, left, legend - 6.0);
    axis(&mut svg, left, top, plot_width, plot_height, scale_max);
    if columns.is_empty() {
        let _ = write!(svg, "<text x=\"{}\" y=\"{}\" {FONT}>暂无数据</text>", left + 8.0, top + 20.0);
    }
    let slot = plot_width / columns.len().max(1) as f64;
    // A few columns stay columns rather than filling the chart.
    let bar_width = (slot * 0.7).clamp(1.0, 48.0);
    let label_every = ((columns.len() as f64 * 40.0 / plot_width).ceil() as usize).max(1);
    for (index, column) in columns.iter().enumerate() {
        let x = left + slot * index as f64 + (slot - bar_width) / 2.0;
        let mut base = top + plot_height;
        let total: f64 = column.values.iter().sum();
        let mut tooltip = escape(&column.label);
        for (series_index, value) in column.values.iter().enumerate() {
            let _ = write!(tooltip, " {}：{}", escape(series.get(series_index).copied().unwrap_or("")), value);
        }
        for (series_index, value) in column.values.iter().enumerate() {
            if *value <= 0.0 || scale_max <= 0.0 {
                continue;
            }
            let h = value / scale_max * plot_height;
            base -= h;
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{base:.1}\" width=\"{bar_width:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{tooltip}</title></rect>",
                COLOURS[series_index % COLOURS.len()],
            );
        }
        if index % label_every == 0 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT}>{}</text>",
                x + bar_width / 2.0,
                top + plot_height + 16.0,
                escape(&column.label)
            );
        }
        if total > 0.0 && columns.len() <= 16 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT}>{}</text>",
                x + bar_width / 2.0,
                base - 4.0,
                format_number(total)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A line over `points` (label, value), e.g. a cumulative count, with a value axis and thinned labels.
pub fn line(id: &str, title: &str, points: &[(String, f64)]) -> String {
    let (left, top, bottom) = (56.0, 16.0, 40.0);
    let plot_height = 200.0;
    let height = top + plot_height + bottom;
    let plot_width = WIDTH - left - 12.0;
    let max = points.iter().map(|(_, value)| *value).fold(0.0, f64::max);
    let scale_max = axis_top(max);
    let mut svg = open(id, title, height);
    axis(&mut svg, left, top, plot_width, plot_height, scale_max);
    if points.is_empty() {
        let _ = write!(svg, "<text x=\"{}\" y=\"{}\" {FONT}>暂无数据</text>", left + 8.0, top + 20.0);
        svg.push_str("</svg>");
        return svg;
    }
    let step = if points.len() > 1 { plot_width / (points.len() - 1) as f64 } else { 0.0 };
    let position = |index: usize, value: f64| {
        let y = if scale_max > 0.0 { top + plot_height - value / scale_max * plot_height } else { top + plot_height };
        (left + step * index as f64, y)
    };
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(index, (_, value))| {
            let (x, y) = position(index, *value);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = write!(
        svg,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
        path.join(" "),
        COLOURS[0]
    );
    let label_every = ((points.len() as f64 * 40.0 / plot_width).ceil() as usize).max(1);
    for (index, (label, value)) in points.iter().enumerate() {
        let (x, y) = position(index, *value);
        let _ = write!(
            svg,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{}\"><title>{}：{}</title></circle>",
            COLOURS[0],
            escape(label),
            format_number(*value)
        );
        if index % label_every == 0 || index + 1 == points.len() {
            let _ = write!(
                svg,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT}>{}</text>",
                top + plot_height + 16.0,
                escape(label)
            );
        }
    }
    if let Some((_, last)) = points.last() {
        let (x, y) = position(points.len() - 1, *last);
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" {FONT}>{}</text>",
            x,
            y - 8.0,
            format_number(*last)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn open(id: &str, title: &str, height: f64) -> String {
    format!(
        "<svg id=\"{id}\" class=\"chart\" role=\"img\" aria-labelledby=\"{id}-title\" xmlns=\"http://www.w3.org/2000/svg\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" width=\"100%\" preserveAspectRatio=\"xMinYMin meet\">\
         <title id=\"{id}-title\">{}</title>",
        escape(title)
    )
}

fn legend_row(svg: &mut String, series: &[&str], left: f64, y: f64) {
    let mut x = left;
    for (index, name) in series.iter().enumerate() {
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{y:.1}\" {FONT}>{}</text>",
            y - 10.0,
            COLOURS[index % COLOURS.len()],
            x + 16.0,
            escape(name)
        );
        x += 16.0 + 14.0 * name.chars().count() as f64 + 20.0;
    }
}

fn axis(svg: &mut String, left: f64, top: f64, width: f64, height: f64, max: f64) {
    for tick in 0..=4 {
        let value = max * f64::from(tick) / 4.0;
        let y = top + height - height * f64::from(tick) / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ccc\" stroke-width=\"1\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" {FONT}>{}</text>",
            left + width,
            left - 6.0,
            y + 4.0,
            format_number(value)
        );
    }
}

/// The top of a value axis of four ticks at or above `value`: each tick a whole 1, 2 or 5 × 10ⁿ, since the
/// values are counts.
fn axis_top(value: f64) -> f64 {
    let raw_step = value / 4.0;
    if raw_step <= 1.0 {
        return 4.0;
    }
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|step| step * magnitude).find(|step| *step >= raw_step);
    4.0 * step.unwrap_or(10.0 * magnitude)
}

/// A count as written in Chinese reports: thousands grouped, 万 past a hundred thousand.
pub fn format_number(value: f64) -> String {
    if value.abs() >= 100_000.0 {
        return format!("{:.1}万", value / 10_000.0);
    }
    if value.fract().abs() > f64::EPSILON {
        return format!("{value:.1}");
    }
    let digits = format!("{}", value.abs() as u64);
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value < 0.0 { format!("-{grouped}") } else { grouped }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_so_a_unit_name_cannot_inject_markup() {
        let bar = Bar { label: "<script>\"x\"&".into(), value: 1.0, text: "1".into() };
        let svg = bars("c", "t", &[bar], 0.0);
        assert!(svg.contains("&lt;script&gt;&quot;x&quot;&amp;"));
        assert!(!svg.contains("<script>"));
    }

    #[test]
    fn axis_ticks_are_whole_round_numbers_at_or_above_the_largest_value() {
        assert_eq!(axis_top(0.0), 4.0);
        assert_eq!(axis_top(3.0), 4.0);
        assert_eq!(axis_top(7.0), 8.0);
        assert_eq!(axis_top(130.0), 200.0);
        assert_eq!(axis_top(1_500_000.0), 2_000_000.0);
        assert_eq!(axis_top(20.0), 20.0);
    }

    #[test]
    fn numbers_are_grouped_and_large_ones_in_wan() {
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(12_345.0), "12,345");
        assert_eq!(format_number(1_500_000.0), "150.0万");
        assert_eq!(format_number(12.5), "12.5");
    }

    #[test]
    fn every_bar_and_column_is_drawn_with_its_title_for_screen_readers() {
        let svg = columns(
            "people",
            "每日登记人数",
            &["在职", "退休"],
            &[
                Column { label: "12-01".into(), values: vec![3.0, 1.0] },
                Column { label: "12-02".into(), values: vec![0.0, 2.0] },
            ],
        );
        assert!(svg.contains("<title id=\"people-title\">每日登记人数</title>"));
        assert_eq!(svg.matches("<rect").count(), 2 + 3, "two legend squares and three non-empty segments");
        let empty = line("cumulative", "累计", &[]);
        assert!(empty.contains("暂无数据"));
    }
}
