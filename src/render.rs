//! Step 6, render: the human view of a plan, in the Terraform tradition.
//! The JSON view is the plan model itself, serialised.

use std::fmt::Write;

use crate::plan::{Action, Plan, Summary};

/// ANSI styling, switched off when output is not a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }

    pub fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    pub fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }

    fn action(&self, action: Action, text: &str) -> String {
        match action {
            Action::Create => self.green(text),
            Action::Update => self.yellow(text),
            Action::Replace | Action::Forget | Action::Delete => self.red(text),
            Action::Run => self.paint("36", text),
            Action::NoOp => text.to_string(),
        }
    }
}

/// The whole plan for a person.
pub fn plan(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    for error in &plan.errors {
        let _ = writeln!(
            out,
            "{} {}: {}",
            style.red("Error:"),
            error.address,
            error.message
        );
        if let Some(help) = &error.help {
            let _ = writeln!(out, "  help: {help}");
        }
    }
    if !plan.errors.is_empty() {
        out.push('\n');
    }
    let changes: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.diff.action.is_change())
        .collect();
    if changes.is_empty() {
        if plan.errors.is_empty() {
            out.push_str(&style.green("No changes. The machine matches plasma.kdl."));
            out.push('\n');
        }
        lock_section(&mut out, plan, style);
        return out;
    }

    // A legend of only the symbols this plan uses.
    out.push_str("Resource actions are indicated with the following symbols:\n");
    for action in [
        Action::Create,
        Action::Update,
        Action::Replace,
        Action::Run,
        Action::Forget,
        Action::Delete,
    ] {
        if changes.iter().any(|c| c.diff.action == action) {
            let _ = writeln!(
                out,
                "  {} {}",
                style.action(action, action.symbol()),
                action.legend()
            );
        }
    }
    out.push_str("\nplasma will perform the following actions:\n");

    for change in &changes {
        let action = change.diff.action;
        let _ = writeln!(
            out,
            "\n  {} {} {} ({})",
            style.bold("#"),
            style.bold(&change.address),
            action.phrase(),
            change.diff.reason
        );
        let _ = writeln!(
            out,
            "  {} {}",
            style.action(action, action.symbol()),
            change.address
        );
        for attr in &change.diff.attributes {
            let line = match (&attr.old, &attr.new) {
                (None, Some(new)) => style.green(&format!("+ {}: {new}", attr.name)),
                (Some(old), None) => style.red(&format!("- {}: {old}", attr.name)),
                (Some(old), Some(new)) => style.yellow(&format!("~ {}: {old} -> {new}", attr.name)),
                (None, None) => format!("  {}", attr.name),
            };
            let _ = writeln!(out, "      {line}");
        }
        if let Some(diff) = &change.diff.content_diff {
            for line in diff.lines() {
                let painted = if line.starts_with("+++") || line.starts_with("---") {
                    style.bold(line)
                } else if line.starts_with('+') {
                    style.green(line)
                } else if line.starts_with('-') {
                    style.red(line)
                } else {
                    line.to_string()
                };
                let _ = writeln!(out, "      {painted}");
            }
        }
        for warning in &change.diff.warnings {
            let _ = writeln!(out, "      {} {warning}", style.yellow("!"));
        }
    }
    lock_section(&mut out, plan, style);
    let _ = writeln!(out, "\n{}", style.bold(&summary_line(&plan.summary)));
    out
}

/// `lock: + venv.comfyui 143 packages`, one line per change to plasma.lock.
fn lock_section(out: &mut String, plan: &Plan, style: Style) {
    if plan.lock.is_empty() {
        return;
    }
    out.push('\n');
    for line in &plan.lock {
        let text = format!("{} {} {}", line.symbol, line.address, line.detail);
        let painted = match line.symbol.as_str() {
            "+" => style.green(&text),
            "-" => style.red(&text),
            _ => style.yellow(&text),
        };
        let _ = writeln!(out, "  lock: {painted}");
    }
}

/// "Plan: 2 to create, 1 to change, 0 to replace." (run, forget and delete only when present).
pub fn summary_line(s: &Summary) -> String {
    let mut line = format!(
        "Plan: {} to create, {} to change, {} to replace",
        s.create, s.update, s.replace
    );
    if s.run > 0 {
        let _ = write!(line, ", {} to run", s.run);
    }
    if s.forget > 0 {
        let _ = write!(line, ", {} to forget", s.forget);
    }
    if s.delete > 0 {
        let _ = write!(line, ", {} to delete", s.delete);
    }
    line.push('.');
    line
}
