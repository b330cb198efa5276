//! Problems found in a spec: load errors, graph errors and lints share one
//! type so that they render the same way and can all be reported in one run.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, Severity,
    SourceSpan,
};

/// The spec's text, shared by every problem that points into it.
pub type Source = Arc<NamedSource<Arc<String>>>;

/// One problem in a spec, with a code, a severity, labelled spans and a help line.
#[derive(Debug, Clone)]
pub struct Problem {
    pub code: String,
    pub severity: Severity,
    pub message: String,
    pub labels: Vec<(SourceSpan, String)>,
    pub help: Option<String>,
    pub source: Option<Source>,
}

/// The longest message, label or help kept, in characters: they quote the
/// spec, and a spec may hold a very long value.
const MAX_TEXT_CHARS: usize = 400;

/// At most `max` characters of `text`, with `…` where it was cut.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

impl Problem {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Problem {
            code: code.to_string(),
            severity: Severity::Error,
            message: clip(&message.into(), MAX_TEXT_CHARS).into_owned(),
            labels: Vec::new(),
            help: None,
            source: None,
        }
    }

    pub fn warning(code: &str, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(code, message)
        }
    }

    pub fn label(mut self, span: impl Into<SourceSpan>, text: impl Into<String>) -> Self {
        self.labels
            .push((span.into(), clip(&text.into(), MAX_TEXT_CHARS).into_owned()));
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(clip(&help.into(), MAX_TEXT_CHARS).into_owned());
        self
    }

    pub fn with_source(mut self, source: &Source) -> Self {
        self.source = Some(source.clone());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The first label's line and column (1-based), for JSON output.
    pub fn location(&self) -> Option<(usize, usize)> {
        let (span, _) = self.labels.first()?;
        let text = self.source.as_ref()?.inner();
        let before = text.get(..span.offset())?;
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Some((line, column))
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(&self.code))
    }

    fn severity(&self) -> Option<Severity> {
        Some(self.severity)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_deref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() || self.source.is_none() {
            return None;
        }
        Some(Box::new(self.labels.iter().enumerate().map(
            |(i, (span, text))| {
                let text = (!text.is_empty()).then(|| text.clone());
                if i == 0 {
                    LabeledSpan::new_primary_with_span(text, *span)
                } else {
                    LabeledSpan::new_with_span(text, *span)
                }
            },
        )))
    }
}

/// The most problems shown in one run; the rest are counted.
pub const MAX_SHOWN: usize = 50;

/// The longest line quoted in a snippet, in bytes; longer lines are clipped
/// around the label. miette pads to a label's column with a format width,
/// which Rust limits to 65,535, so a label further right panics.
const MAX_SHOWN_LINE: usize = 160;

/// The most lines a label may cover before it is shortened to its first line.
const MAX_LABEL_LINES: usize = 8;

/// Renders problems the way miette does, with colour only when asked: the
/// first [`MAX_SHOWN`], then how many more there are.
pub fn render(problems: &[Problem], color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
    let mut out = String::new();
    for problem in problems.iter().take(MAX_SHOWN) {
        // Writing to a String cannot fail.
        let _ = handler.render_report(&mut out, &shown(problem));
    }
    if let Some(rest) = problems.len().checked_sub(MAX_SHOWN).filter(|&n| n > 0) {
        out.push_str(&format!(
            "… and {rest} more problem{} not shown (fix the ones above first)\n",
            if rest == 1 { "" } else { "s" }
        ));
    }
    out
}

/// The problem as it is drawn: with long lines of its source clipped around
/// its labels, and labels over many lines shortened to their first line.
fn shown(problem: &Problem) -> Drawn<'_> {
    let drawn = |source, labels| Drawn {
        problem,
        source,
        labels,
    };
    let Some(source) = &problem.source else {
        return drawn(None, problem.labels.clone());
    };
    let text = source.inner().as_str();
    let clamp = |span: &SourceSpan| {
        let mut start = span.offset().min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (span.offset() + span.len()).clamp(start, text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let lines = text[start..end].matches('\n').count();
        let end = if lines > MAX_LABEL_LINES {
            text[start..].find('\n').map_or(end, |i| start + i)
        } else {
            end
        };
        start..end
    };
    let spans: Vec<_> = problem.labels.iter().map(|(s, _)| clamp(s)).collect();
    let anchors: Vec<usize> = spans.iter().map(|r| r.start).collect();
    let clipped = ClippedText::new(source.name(), text, &anchors);
    let labels = spans
        .iter()
        .zip(&problem.labels)
        .map(|(r, (_, label))| {
            let start = clipped.map(r.start);
            let end = clipped.map(r.end).max(start);
            (SourceSpan::new(start.into(), end - start), label.clone())
        })
        .collect();
    drawn(Some(clipped), labels)
}

/// A problem ready for miette: its labels moved into a clipped source.
struct Drawn<'a> {
    problem: &'a Problem,
    source: Option<ClippedText<'a>>,
    labels: Vec<(SourceSpan, String)>,
}

impl fmt::Debug for Drawn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.problem, f)
    }
}

impl fmt::Display for Drawn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.problem, f)
    }
}

impl std::error::Error for Drawn<'_> {}

impl Diagnostic for Drawn<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.problem.code()
    }

    fn severity(&self) -> Option<Severity> {
        self.problem.severity()
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Diagnostic::help(self.problem)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() || self.source.is_none() {
            return None;
        }
        Some(Box::new(self.labels.iter().enumerate().map(
            |(i, (span, text))| {
                let text = (!text.is_empty()).then(|| text.clone());
                if i == 0 {
                    LabeledSpan::new_primary_with_span(text, *span)
                } else {
                    LabeledSpan::new_with_span(text, *span)
                }
            },
        )))
    }
}

/// A text whose long lines keep only a window (around an anchor, when the
/// line has one), with a map from offsets in the original to offsets in it.
/// Lines are kept one for one, so line numbers stay right; the location in
/// a snippet's header is the one in the original.
struct ClippedText<'a> {
    name: &'a str,
    original: &'a str,
    text: Cow<'a, str>,
    /// Kept pieces: (offset in the original, offset in `text`, length).
    kept: Vec<(usize, usize, usize)>,
}

impl<'a> ClippedText<'a> {
    fn new(name: &'a str, original: &'a str, anchors: &[usize]) -> Self {
        let mut clipped = ClippedText {
            name,
            original,
            text: Cow::Borrowed(original),
            kept: Vec::new(),
        };
        if original.split('\n').all(|l| l.len() <= MAX_SHOWN_LINE) {
            clipped.kept.push((0, 0, original.len()));
            return clipped;
        }
        let mut text = String::with_capacity(original.len().min(1 << 16));
        let mut line_start = 0;
        for line in original.split_inclusive('\n') {
            let line_end = line_start + line.len();
            if line.len() <= MAX_SHOWN_LINE {
                clipped.keep(&mut text, line_start..line_end);
            } else {
                let center = anchors
                    .iter()
                    .copied()
                    .find(|a| (line_start..line_end).contains(a))
                    .unwrap_or(line_start);
                let mut from = center.saturating_sub(MAX_SHOWN_LINE / 2).max(line_start);
                while !original.is_char_boundary(from) {
                    from -= 1;
                }
                let mut to = (from + MAX_SHOWN_LINE).min(line_end);
                while !original.is_char_boundary(to) {
                    to += 1;
                }
                if from > line_start {
                    text.push('…');
                }
                clipped.keep(&mut text, from..to);
                if to < line_end {
                    text.push('…');
                    if line.ends_with('\n') {
                        clipped.keep(&mut text, line_end - 1..line_end);
                    }
                }
            }
            line_start = line_end;
        }
        clipped.text = Cow::Owned(text);
        clipped
    }

    fn keep(&mut self, text: &mut String, range: std::ops::Range<usize>) {
        self.kept.push((range.start, text.len(), range.len()));
        text.push_str(&self.original[range]);
    }

    /// Where an original offset lands: inside a kept piece, or at the start
    /// of the next one when it was clipped away.
    fn map(&self, offset: usize) -> usize {
        let i = self.kept.partition_point(|&(start, _, _)| start <= offset);
        if let Some(&(start, at, len)) = i.checked_sub(1).map(|i| &self.kept[i])
            && offset <= start + len
        {
            return at + (offset - start);
        }
        self.kept.get(i).map_or(self.text.len(), |&(_, at, _)| at)
    }

    /// The original offset of an offset in the clipped text.
    fn unmap(&self, offset: usize) -> usize {
        let i = self.kept.partition_point(|&(_, at, _)| at <= offset);
        match i.checked_sub(1).map(|i| self.kept[i]) {
            Some((start, at, len)) => start + (offset - at).min(len),
            None => 0,
        }
    }
}

impl miette::SourceCode for ClippedText<'_> {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let text: &'a str = &self.text;
        let contents = text.read_span(span, context_lines_before, context_lines_after)?;
        let (line, column) = if context_lines_before == 0 && context_lines_after == 0 {
            // The primary label's location, for the header: the original's.
            let offset = self.unmap(span.offset());
            let before = self.original.get(..offset).unwrap_or_default();
            let line = before.matches('\n').count();
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count());
            (line, column)
        } else {
            (contents.line(), contents.column())
        };
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.to_string(),
            contents.data(),
            *contents.span(),
            line,
            column,
            contents.line_count(),
        )))
    }
}

/// A failed load: every problem of the file, reported together.
#[derive(Debug)]
pub struct SpecErrors {
    pub problems: Vec<Problem>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self.problems.iter().filter(|p| p.is_error()).count();
        write!(
            f,
            "the spec has {errors} error{}",
            if errors == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for SpecErrors {}

/// Suggests the declared address an unknown one most likely means: the
/// closest address, else one whose name is the closest to (or contains)
/// what was written, so `cfg` finds `file.accelerate-cfg`.
pub fn suggest_address<'a, I>(unknown: &str, addresses: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str> + Clone,
    I::IntoIter: 'a,
{
    if let Some(s) = did_you_mean(unknown, addresses.clone()) {
        return Some(s);
    }
    let name = unknown.split_once('.').map_or(unknown, |(_, n)| n);
    let names = addresses
        .clone()
        .into_iter()
        .filter_map(|a| a.split_once('.').map(|(_, n)| n));
    let only = |mut found: Box<dyn Iterator<Item = &'a str> + 'a>| {
        // Only a single match is a suggestion; several are a guess.
        let first = found.next()?;
        found.next().is_none().then_some(first)
    };
    let name_of = |a: &str| a.split_once('.').map(|(_, n)| n.to_string());
    if let Some(close) = did_you_mean(name, names) {
        let close = close.to_string();
        return only(Box::new(
            addresses
                .into_iter()
                .filter(move |a| name_of(a).as_deref() == Some(close.as_str())),
        ));
    }
    if name.is_empty() {
        return None;
    }
    let name = name.to_string();
    only(Box::new(addresses.into_iter().filter(move |a| {
        name_of(a).is_some_and(|n| n.contains(name.as_str()))
    })))
}

/// Suggests the closest known name, for "did you mean" help lines.
pub fn did_you_mean<'a>(
    unknown: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_at(text: &str, offset: usize) -> Problem {
        let source: Source = Arc::new(NamedSource::new("t.kdl", Arc::new(text.to_string())));
        Problem::error("t::x", "bad")
            .label(SourceSpan::new(offset.into(), 3), "here")
            .with_source(&source)
    }

    #[test]
    fn labels_far_to_the_right_render_clipped() {
        let text = format!("a {{\n    b \"{}\" bad=1\n}}\n", "x".repeat(100_000));
        let offset = text.find("bad").unwrap();
        let out = render(&[problem_at(&text, offset)], false);
        assert!(out.contains("…"), "{out}");
        assert!(out.contains("\" bad=1"), "{out}");
        assert!(out.contains("2 │"), "line numbers are kept: {out}");
        assert!(out.len() < 2_000, "{}", out.len());
    }

    #[test]
    fn addresses_are_suggested_by_their_name() {
        let known = ["file.accelerate-cfg", "repo.comfyui", "venv.comfyui"];
        assert_eq!(
            suggest_address("cfg", known.iter().copied()),
            Some("file.accelerate-cfg")
        );
        assert_eq!(
            suggest_address("repo.comfyiu", known.iter().copied()),
            Some("repo.comfyui")
        );
        assert!(matches!(
            suggest_address("comfyui", known.iter().copied()),
            Some("repo.comfyui" | "venv.comfyui")
        ));
        assert_eq!(suggest_address("zzz", known.iter().copied()), None);
    }

    #[test]
    fn only_the_first_problems_are_shown() {
        let text = "a\n";
        let problems = vec![problem_at(text, 0); MAX_SHOWN + 7];
        let out = render(&problems, false);
        assert_eq!(out.matches("× bad").count(), MAX_SHOWN);
        assert!(out.ends_with("… and 7 more problems not shown (fix the ones above first)\n"));
    }

    #[test]
    fn clipping_keeps_multibyte_characters_whole() {
        let text = format!("{}bad\n", "é".repeat(50_000));
        let offset = text.find("bad").unwrap();
        let out = render(&[problem_at(&text, offset)], false);
        assert!(out.contains("bad"), "{out}");
    }
}
