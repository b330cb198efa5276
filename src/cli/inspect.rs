//! `show` and `state`: what is observed and what was recorded.

use super::*;

/// `plasma show platform`: the machine's facts (os, arch, accelerator with
/// the driver's CUDA version, memory, the Pythons found), as text or JSON.
pub(super) fn show_platform(json: bool) -> CommandResult {
    let facts = crate::platform::current();
    let cuda = (facts.accelerator == "cuda")
        .then(crate::platform::cuda_version)
        .flatten();
    let pythons = crate::platform::pythons();
    if json {
        print_json(&serde_json::json!({
            "facts": facts,
            "cuda_version": cuda,
            "pythons": pythons,
        }));
        return Ok(EXIT_OK);
    }
    let faked = |what: &str| {
        if facts
            .faked
            .iter()
            .any(|f| f == what || (what == "memory" && f == "memory-gb"))
        {
            format!(" (from {})", crate::platform::FAKE_VAR)
        } else {
            String::new()
        }
    };
    println!("os           {}{}", facts.os, faked("os"));
    println!("arch         {}{}", facts.arch, faked("arch"));
    let accelerator = match &cuda {
        Some(v) => format!("cuda (driver supports CUDA {v})"),
        None => facts.accelerator.clone(),
    };
    println!("accelerator  {accelerator}{}", faked("accelerator"));
    match facts.memory_bytes {
        Some(bytes) => println!(
            "memory       {:.1} GiB ({bytes} bytes){}",
            bytes as f64 / (1u64 << 30) as f64,
            faked("memory")
        ),
        None => println!("memory       unknown"),
    }
    if pythons.is_empty() {
        println!("pythons      none found on PATH or in pyenv");
    }
    for (i, python) in pythons.iter().enumerate() {
        println!(
            "{}{} {}",
            if i == 0 {
                "pythons      "
            } else {
                "             "
            },
            python.version,
            python.path.display()
        );
    }
    println!("\nAs a spec line: platform {}", facts.summary());
    Ok(EXIT_OK)
}

pub(super) async fn show(env: &Env, address: &str, json: bool, command: bool) -> CommandResult {
    let loaded = load(env)?;
    if command {
        let lora = loaded
            .spec
            .resources
            .iter()
            .find(|r| r.address.to_string() == address)
            .and_then(|r| {
                r.resource
                    .as_any()
                    .downcast_ref::<crate::resource::lora::Lora>()
            })
            .ok_or_else(|| {
                Failure::Message(format!(
                    "`--command` is for a lora; `{address}` is not one in the spec"
                ))
            })?;
        println!("{}", lora.command_line(&loaded.state_file.dir()));
        return Ok(EXIT_OK);
    }
    let state = read_state(env, &loaded.state_file)?;
    let Some(index) = loaded
        .spec
        .resources
        .iter()
        .position(|r| r.address.to_string() == address)
    else {
        return Err(engine::select(&loaded, &[address.to_string()])
            .err()
            .map_or_else(
                || Failure::Message(format!("no resource `{address}`")),
                Failure::from,
            ));
    };
    let mut selected = vec![false; loaded.spec.resources.len()];
    selected[index] = true;
    let results = engine::observe(
        &loaded,
        state.as_ref(),
        &ObserveOptions::default(),
        &selected,
    )
    .await;
    let observation = results
        .into_iter()
        .nth(index)
        .flatten()
        .expect("the selected resource was observed")
        .map_err(|e| Failure::Message(format!("{address}: {e}")))?;
    let recorded = state.as_ref().and_then(|s| s.resources.get(address));
    let view = schema::ShowReport {
        address: address.to_string(),
        observed: observation.json.clone(),
        desired: loaded.spec.resources[index].resource.desired(),
        state: recorded.cloned(),
    };
    if json {
        print_json(&view);
    } else {
        println!("# {address}");
        println!("observed:");
        print_value(&view.observed, 1);
        println!("desired:");
        print_value(&view.desired, 1);
        match recorded {
            Some(entry) => println!(
                "last applied: {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(entry.applied_at)
                )
            ),
            None => println!("never applied"),
        }
        // The kind's own view (a table, a chart), else the recorded outputs.
        let resource = &loaded.spec.resources[index].resource;
        match (resource.show(recorded.map(|e| &e.outputs)), recorded) {
            (Some(view), _) => print!("{view}"),
            (None, Some(entry)) => {
                println!("outputs:");
                print_value(&serde_json::Value::Object(entry.outputs.clone()), 1);
            }
            (None, None) => {}
        }
    }
    Ok(EXIT_OK)
}

/// A JSON value as indented `key: value` lines.
fn print_value(value: &serde_json::Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                        println!("{pad}{k}:");
                        print_value(v, depth + 1);
                    }
                    serde_json::Value::String(s) => println!("{pad}{k}: {s}"),
                    other => println!("{pad}{k}: {other}"),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                match item {
                    serde_json::Value::String(s) => println!("{pad}- {s}"),
                    serde_json::Value::Object(_) => {
                        println!("{pad}-");
                        print_value(item, depth + 1);
                    }
                    other => println!("{pad}- {other}"),
                }
            }
        }
        serde_json::Value::String(s) => println!("{pad}{s}"),
        other => println!("{pad}{other}"),
    }
}

pub(super) fn state_command(env: &Env, cmd: StateCommand) -> CommandResult {
    let spec = spec_path(env)?;
    let state_file = match &env.state {
        Some(p) => crate::state::StateFile { path: p.clone() },
        None => crate::state::StateFile::beside(spec.parent().unwrap_or(Path::new("."))),
    };
    match cmd {
        StateCommand::List => {
            let state = read_state(env, &state_file)?;
            for (address, entry) in state.iter().flat_map(|s| &s.resources) {
                println!(
                    "{address}\t{}{}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(entry.applied_at)
                    ),
                    if entry.pending {
                        "\tpending (an apply was creating it when it stopped)"
                    } else {
                        ""
                    }
                );
            }
            Ok(EXIT_OK)
        }
        StateCommand::Show { address } => {
            let state = read_state(env, &state_file)?;
            let entry = state
                .as_ref()
                .and_then(|s| s.resources.get(&address))
                .ok_or_else(|| Failure::Message(format!("`{address}` is not in the state")))?;
            print_json(entry);
            Ok(EXIT_OK)
        }
        StateCommand::Rm {
            address,
            lock_timeout,
        } => {
            let _lock = lock_state(&state_file, lock_timeout, "state rm")?;
            let mut state = read_state(env, &state_file)?
                .ok_or_else(|| Failure::Message("there is no state yet".into()))?;
            if state.resources.remove(&address).is_none() {
                return Err(Failure::Message(format!("`{address}` is not in the state")));
            }
            state_file.save(&mut state)?;
            println!("Removed {address} from the state (its files are kept).");
            Ok(EXIT_OK)
        }
        StateCommand::Restore {
            force,
            lock_timeout,
        } => {
            let _lock = lock_state(&state_file, lock_timeout, "state restore")?;
            let restored = state_file.restore(force)?;
            println!(
                "Restored the state from {} ({} resources, lineage {}, now serial {}).",
                state_file.backup_path().display(),
                restored.resources.len(),
                restored.lineage,
                restored.serial
            );
            Ok(EXIT_OK)
        }
    }
}
