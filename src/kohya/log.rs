//! Reading `train_network.py`'s output as it arrives (contract §4 and the
//! observations on 3e6935a): the `total optimization steps` line on stdout,
//! the tqdm bar on stderr redrawn with `\r` (each step drawn twice, the
//! first time without its `avr_loss` postfix), `model saved.` glued to the
//! last bar, `saving checkpoint: …` lines, and rich-wrapped log lines.
//! Each stream gets its own [`LogParser`]; chunks may split lines anywhere.

/// Something the trainer said.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `total optimization steps / 学習ステップ数: N`.
    TotalSteps(u64),
    /// A bar draw: `steps: … | step/total [… , avr_loss=x]`.
    Step {
        step: u64,
        total: u64,
        loss: Option<f64>,
    },
    /// `saving checkpoint: PATH`.
    Saving(String),
}

/// Splits a byte stream into `\r`/`\n`-separated segments and reads events.
#[derive(Debug, Default)]
pub struct LogParser {
    pending: String,
}

impl LogParser {
    /// Reads a chunk; events of segments completed by it are returned.
    pub fn feed(&mut self, chunk: &str) -> Vec<Event> {
        self.pending.push_str(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.find(['\r', '\n']) {
            let segment: String = self.pending.drain(..=end).collect();
            parse_segment(segment.trim_end_matches(['\r', '\n']), &mut events);
        }
        events
    }

    /// Reads what is left once the stream ended.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        parse_segment(&rest, &mut events);
        events
    }
}

/// Events in one segment. A segment can hold several glued bar draws.
pub fn parse_segment(segment: &str, events: &mut Vec<Event>) {
    if let Some(at) = segment.find("total optimization steps")
        && let Some(n) = segment[at..]
            .split_once(':')
            .and_then(|(_, rest)| leading_number(rest.trim_start()))
    {
        events.push(Event::TotalSteps(n));
    }
    if let Some(at) = segment.find("saving checkpoint:") {
        let path = segment[at + "saving checkpoint:".len()..].trim();
        if !path.is_empty() {
            events.push(Event::Saving(path.to_string()));
        }
    }
    let mut rest = segment;
    while let Some(at) = rest.find("steps:") {
        let after = &rest[at + "steps:".len()..];
        let end = after.find("steps:").unwrap_or(after.len());
        if let Some(event) = parse_bar(&after[..end]) {
            events.push(event);
        }
        rest = &after[end..];
    }
}

/// `  12%|█▏  | 220/1840 [13:34<1:39:55, 3.70s/it, avr_loss=0.0812]`.
fn parse_bar(bar: &str) -> Option<Event> {
    let bracket = bar.find(" [")?;
    let counts = bar[..bracket].rsplit(['|', ' ']).next()?;
    let (step, total) = counts.split_once('/')?;
    let step = step.trim().parse().ok()?;
    let total = total.trim().parse().ok()?;
    let loss = bar[bracket..]
        .find("avr_loss=")
        .and_then(|at| leading_float(&bar[bracket + at + "avr_loss=".len()..]));
    Some(Event::Step { step, total, loss })
}

fn leading_number(text: &str) -> Option<u64> {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A float at the start of `text` (`0.0812`, `1`, `1.2e-05`, `nan`), ignoring
/// whatever is glued after it (`0.081]model saved.`).
fn leading_float(text: &str) -> Option<f64> {
    let text = text.trim_start();
    let lower = text.get(..3).map(str::to_ascii_lowercase);
    if lower.as_deref() == Some("nan") {
        return Some(f64::NAN);
    }
    if lower.as_deref() == Some("inf") {
        return Some(f64::INFINITY);
    }
    let mut end = 0;
    let bytes = text.as_bytes();
    while end < bytes.len() {
        let c = bytes[end];
        let exponent_sign =
            (c == b'-' || c == b'+') && end > 0 && matches!(bytes[end - 1], b'e' | b'E');
        let exponent = (c == b'e' || c == b'E')
            && end > 0
            && bytes
                .get(end + 1)
                .is_some_and(|n| n.is_ascii_digit() || *n == b'-' || *n == b'+');
        if c.is_ascii_digit() || c == b'.' || (c == b'-' && end == 0) || exponent || exponent_sign {
            end += 1;
        } else {
            break;
        }
    }
    text[..end].parse().ok()
}

/// Why a run failed, read from the end of its output and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Killed by SIGKILL (the kernel's out-of-memory killer, most likely).
    Killed,
    /// accelerate's fp16 check on a device that is not CUDA.
    Fp16NeedsGpu(String),
    /// fp16 on CPU in accelerate 0.33: the first step fails on dtypes.
    Fp16OnCpu,
    /// `ModuleNotFoundError: No module named 'X'`.
    MissingModule(String),
    /// The CLIP tokenizer could not be fetched (offline, no cache).
    TokenizerOffline,
    /// Anything else: the tail of the output says what.
    Other,
}

/// Reads the failure from the output text and the exit signal, if any.
pub fn diagnose(output: &str, signal: Option<i32>) -> Failure {
    if signal == Some(9) || output.contains("Signals.SIGKILL") || output.contains("exit status 137")
    {
        return Failure::Killed;
    }
    if let Some(at) = output.find("No module named '") {
        let rest = &output[at + "No module named '".len()..];
        let module = rest.split('\'').next().unwrap_or_default();
        return Failure::MissingModule(module.to_string());
    }
    if let Some(at) = output.find("fp16 mixed precision requires a GPU") {
        let line = output[at..].lines().next().unwrap_or_default();
        return Failure::Fp16NeedsGpu(line.trim().to_string());
    }
    if output.contains("c10::Half != float") {
        return Failure::Fp16OnCpu;
    }
    if output.contains("Can't load tokenizer") {
        return Failure::TokenizerOffline;
    }
    Failure::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_redrawn_with_carriage_returns_and_glued_text_are_read() {
        let mut p = LogParser::default();
        let mut events = p.feed("steps:   1%| | 1/160 [00:14<37:19, 14.09s/it]\rsteps:   1%| | 1/160 [00:14<37:19, 14.09s/it, avr_loss=0.1");
        events.extend(p.feed("23]\rsteps:   1%| | 2/160 [00:16<20:00, 8.0s/it, avr_loss=1      ]"));
        events.extend(p.feed(
            "\rsteps: 100%|█| 160/160 [05:00<00:00, 2.0s/it, avr_loss=0.0812]model saved.\n",
        ));
        assert_eq!(
            events,
            [
                Event::Step {
                    step: 1,
                    total: 160,
                    loss: None
                },
                Event::Step {
                    step: 1,
                    total: 160,
                    loss: Some(0.123)
                },
                Event::Step {
                    step: 2,
                    total: 160,
                    loss: Some(1.0)
                },
                Event::Step {
                    step: 160,
                    total: 160,
                    loss: Some(0.0812)
                },
            ]
        );
    }

    #[test]
    fn total_steps_saves_and_nan_are_read() {
        let mut p = LogParser::default();
        let mut events = p.feed("  num epochs / epoch数: 4\n  total optimization steps / 学習ステップ数: 1840\n\nsaving checkpoint: /o/x-step00000200.safetensors\n");
        events.extend(p.feed("steps: 1%| | 3/1840 [00:03<30:00, 1.0s/it, avr_loss=nan]"));
        events.extend(p.finish());
        assert_eq!(events[0], Event::TotalSteps(1840));
        assert_eq!(
            events[1],
            Event::Saving("/o/x-step00000200.safetensors".into())
        );
        assert!(matches!(events[2], Event::Step { step: 3, loss: Some(l), .. } if l.is_nan()));
    }

    #[test]
    fn two_bars_glued_in_one_segment_are_both_read() {
        let mut events = Vec::new();
        parse_segment(
            "steps: 50%| | 5/10 [00:05<00:05, 1.0s/it, avr_loss=0.5]steps: 60%| | 6/10 [00:06<00:04, 1.0s/it, avr_loss=1.2e-05]",
            &mut events,
        );
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1],
            Event::Step {
                step: 6,
                total: 10,
                loss: Some(1.2e-05)
            }
        );
    }

    #[test]
    fn failures_are_recognised() {
        assert_eq!(
            diagnose("ModuleNotFoundError: No module named 'lycoris'\n", None),
            Failure::MissingModule("lycoris".into())
        );
        assert_eq!(
            diagnose(
                "subprocess.CalledProcessError: ... died with <Signals.SIGKILL: 9>.",
                None
            ),
            Failure::Killed
        );
        assert_eq!(diagnose("", Some(9)), Failure::Killed);
        assert!(matches!(
            diagnose(
                "ValueError: fp16 mixed precision requires a GPU (not 'mps').",
                None
            ),
            Failure::Fp16NeedsGpu(_)
        ));
        assert_eq!(
            diagnose(
                "OSError: Can't load tokenizer for 'openai/clip-vit-large-patch14'",
                None
            ),
            Failure::TokenizerOffline
        );
        assert_eq!(diagnose("RuntimeError: boom", Some(15)), Failure::Other);
    }
}
