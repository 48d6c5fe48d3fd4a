//! The bindings' hand-written declarations cannot drift from the Rust types: every
//! record, option and enum declared in `bindings-python/python/anneal/_anneal.pyi`
//! and `bindings-node/header.d.ts` is compared with the JSON schema of its Rust type
//! (field names, in each language's spelling, and enum values).
//!
//! A new field in a core type fails this test until both declarations have it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use anneal::types::schema::{camel, schema_of};
use serde_json::Value;

fn read(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A schema's root, with `$ref`s resolved.
fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => &root["$defs"][name],
        None => s,
    }
}

/// Field names of a struct type.
fn fields(schema: &Value) -> BTreeSet<String> {
    let root = resolve(schema, schema);
    root["properties"].as_object().unwrap_or_else(|| panic!("no properties: {root}")).keys().cloned().collect()
}

/// Values of a named enum.
fn values(schema: &Value) -> BTreeSet<String> {
    schema["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// Per tagged-union variant (`type` const): its field names.
fn variants(schema: &Value) -> Vec<(String, BTreeSet<String>)> {
    schema["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let v = resolve(schema, v);
            let tag = v["properties"]["type"]["const"].as_str().unwrap().to_string();
            (tag, v["properties"].as_object().unwrap().keys().cloned().collect())
        })
        .collect()
}

macro_rules! schemas {
    ($($t:ident),* $(,)?) => {
        vec![$((stringify!($t), schema_of::<anneal::$t>())),*]
    };
}

/// Records and option structs declared in both bindings under the same name.
fn structs() -> Vec<(&'static str, Value)> {
    let mut v = schemas!(
        DatasetRecord,
        DatasetStats,
        DatasetSplit,
        FieldStats,
        LengthBucket,
        ImageStats,
        SizeStats,
        ModelFile,
        ModelRecord,
        JobRecord,
        TrainReport,
        MetricPoint,
        JobLog,
        Timings,
        Generation,
        StreamChunk,
        Score,
        GenerationRecord,
        ModelUsage,
        Prediction,
        PredictionRecord,
        RealisedAccuracy,
        EvaluationRecord,
        DriftCheck,
        LossDrift,
    );
    v.push(("DriftReport", schema_of::<anneal::types::DriftReport>()));
    v.push(("ColumnDrift", schema_of::<anneal::types::ColumnDrift>()));
    v
}

/// Named enums declared as literal unions.
fn enums() -> Vec<(&'static str, Value)> {
    let mut v = schemas!(
        DatasetFormat,
        SourceFormat,
        ImageLayout,
        TxtMode,
        OnDuplicate,
        ModelKind,
        Storage,
        IfExists,
        Family,
        JobStatus,
        Schedule,
        MetricKind,
        FinishReason,
        GenerationKind,
        FinishStatus,
        ImageCrop,
        ClassifierModel,
        ClassifierOptimizer,
        ClassWeighting,
    );
    v.push(("DriftVerdict", schema_of::<anneal::types::DriftVerdict>()));
    v.push(("DriftTest", schema_of::<anneal::types::DriftTest>()));
    v.push(("ColumnKind", schema_of::<anneal::types::ColumnKind>()));
    v
}

// ---------------------------------------------------------------- Python stub

/// The body lines of `class <name>` (indented lines after it).
fn py_class<'a>(pyi: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let mut lines = pyi.lines();
    lines.find(|l| l.starts_with(&format!("class {name}(")) || l.starts_with(&format!("class {name}:")))?;
    Some(lines.take_while(|l| l.is_empty() || l.starts_with(' ')).collect())
}

/// Attribute names of a stub class: `@property` getters, or `name: type` lines of a TypedDict.
fn py_attributes(body: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut property = false;
    for l in body {
        let t = l.trim();
        if t == "@property" {
            property = true;
        } else if let Some(rest) = t.strip_prefix("def ") {
            if property {
                out.insert(rest.split('(').next().unwrap().to_string());
            }
            property = false;
        } else if l.starts_with("    ") && !l.starts_with("     ") && t.contains(": ") && !t.starts_with('#') {
            out.insert(t.split(':').next().unwrap().to_string());
        }
    }
    out
}

/// Keyword-only parameters of `class.method` in the stub (after `*`).
fn py_kwargs(pyi: &str, class: &str, method: &str) -> BTreeSet<String> {
    let body = py_class(pyi, class).unwrap_or_else(|| panic!("no class {class} in the stub"));
    let text = body.join("\n");
    let start = text.find(&format!("def {method}(")).unwrap_or_else(|| panic!("no {class}.{method} in the stub"));
    let sig = &text[start..];
    let sig = &sig[..sig.find(") ->").unwrap()];
    let mut after_star = false;
    let mut out = BTreeSet::new();
    // Split on top-level commas (types hold `dict[str, str]`, `Literal["a", "b"]`).
    let (mut depth, mut params, mut cur) = (0usize, Vec::new(), String::new());
    for c in sig[sig.find('(').unwrap() + 1..].chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => params.push(std::mem::take(&mut cur)),
            _ => {}
        }
        if c != ',' || depth > 0 {
            cur.push(c);
        }
    }
    params.push(cur);
    for p in &params {
        let p = p.trim();
        if p == "*" {
            after_star = true;
        } else if after_star && !p.is_empty() {
            out.insert(p.split(':').next().unwrap().trim().to_string());
        }
    }
    out
}

fn py_literal(pyi: &str, name: &str) -> Option<BTreeSet<String>> {
    let line = pyi.lines().find(|l| l.starts_with(&format!("{name} = Literal[")))?;
    Some(
        line[line.find('[').unwrap() + 1..line.rfind(']').unwrap()]
            .split(',')
            .map(|v| v.trim().trim_matches('"').to_string())
            .collect(),
    )
}

#[test]
fn python_stub_matches_the_rust_types() {
    let pyi = read("bindings-python/python/anneal/_anneal.pyi");
    let mut problems = Vec::new();
    // Records: one attribute per field (plus documented aliases).
    // Documented extras: a computed property.
    let aliases: &[(&str, &str)] = &[("JobRecord", "is_resumable")];
    for (name, schema) in structs() {
        let Some(body) = py_class(&pyi, name) else {
            problems.push(format!("class {name} is missing"));
            continue;
        };
        let mut got = py_attributes(&body);
        got.retain(|a| !aliases.contains(&(name, a.as_str())));
        let want = fields(&schema);
        if got != want {
            problems.push(format!("{name}: stub has {got:?}, Rust has {want:?}"));
        }
    }
    // Options given as dicts.
    for (name, schema) in schemas!(LoraConfig, TrainSpec, ImageTrainOptions, ChatMessage, ClassifierConfig) {
        let got = py_attributes(&py_class(&pyi, name).unwrap_or_default());
        let want = fields(&schema);
        if got != want {
            problems.push(format!("{name}: stub has {got:?}, Rust has {want:?}"));
        }
    }
    // Options given as keyword arguments.
    let bindings_only: BTreeSet<String> = ["on_event", "cancel", "progress"].map(String::from).into();
    for (class, method, (name, schema)) in [
        ("DatasetStore", "import_file", schemas!(ImportOptions).remove(0)),
        ("DatasetStore", "import_records", schemas!(ImportOptions).remove(0)),
        ("ModelRegistry", "register_dir", schemas!(RegisterOptions).remove(0)),
        ("ModelRegistry", "create_preset", schemas!(PresetOptions).remove(0)),
        ("ModelRegistry", "export", schemas!(ExportOptions).remove(0)),
        ("ModelRegistry", "import_bundle", schemas!(ImportBundleOptions).remove(0)),
        ("ModelRegistry", "list", schemas!(ModelFilter).remove(0)),
        ("ModelRegistry", "generations", schemas!(GenerationFilter).remove(0)),
        ("TrainingEngine", "jobs", schemas!(JobFilter).remove(0)),
        ("Home", "generator", schemas!(GeneratorOptions).remove(0)),
        ("Home", "image_generator", schemas!(ImageGeneratorOptions).remove(0)),
        ("Home", "open", schemas!(HomeOptions).remove(0)),
        ("Generator", "generate", schemas!(GenerationConfig).remove(0)),
        ("Generator", "stream", schemas!(GenerationConfig).remove(0)),
        ("Generator", "generate_batch", schemas!(GenerationConfig).remove(0)),
        ("Generator", "score", schemas!(ScoreOptions).remove(0)),
        ("ImageGenerator", "generate", schemas!(ImageRequest).remove(0)),
        ("DatasetStore", "split", schemas!(SplitOptions).remove(0)),
        ("DatasetStore", "delete", schemas!(DeleteOptions).remove(0)),
        ("DatasetStore", "import_images", schemas!(ImageImportOptions).remove(0)),
        ("ModelRegistry", "delete", schemas!(DeleteOptions).remove(0)),
        ("Home", "predictor", schemas!(PredictorOptions).remove(0)),
        ("Continual", "predictions", schemas!(PredictionFilter).remove(0)),
        ("Continual", "realised_accuracy", schemas!(AccuracyOptions).remove(0)),
        ("Continual", "drift", ("DriftOptions", schema_of::<anneal::types::DriftOptions>())),
    ] {
        let got: BTreeSet<String> = py_kwargs(&pyi, class, method).difference(&bindings_only).cloned().collect();
        let mut want = fields(&schema);
        if name == "ImageRequest" {
            // The first positional argument `prompt` (a str or a list).
            want.remove("prompts");
        }
        if name == "ImportOptions" && method == "import_records" {
            // In memory: the source is always `records`, there is no TXT file.
            want.remove("source_format");
            want.remove("txt_mode");
        }
        if got != want {
            problems.push(format!("{class}.{method} ({name}): stub has {got:?}, Rust has {want:?}"));
        }
    }
    // Enums.
    for (name, schema) in enums() {
        if let Some(got) = py_literal(&pyi, name) {
            if got != values(&schema) {
                problems.push(format!("{name}: stub has {got:?}, Rust has {:?}", values(&schema)));
            }
        }
    }
    // Events: one TypedDict per variant.
    for (tag, want) in variants(&schema_of::<anneal::Event>()) {
        let class: String = tag.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect::<String>() + "Event";
        let got = py_attributes(&py_class(&pyi, &class).unwrap_or_default());
        if got != want {
            problems.push(format!("{class}: stub has {got:?}, Rust has {want:?}"));
        }
    }
    assert!(problems.is_empty(), "_anneal.pyi drifted from the Rust types:\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------- TypeScript

/// Property names of `export interface <name> { ... }` (top level only).
fn ts_interface(dts: &str, name: &str) -> Option<BTreeSet<String>> {
    let start = dts.find(&format!("export interface {name} {{"))?;
    let body = &dts[start..];
    let body = &body[body.find('{').unwrap() + 1..];
    let mut depth = 0usize;
    let mut out = BTreeSet::new();
    let mut in_comment = false;
    for line in body.lines() {
        let t = line.trim();
        if t.starts_with("/*") {
            in_comment = !t.contains("*/");
            continue;
        }
        if in_comment {
            in_comment = !t.contains("*/");
            continue;
        }
        if depth == 0 && t == "}" {
            break;
        }
        if depth == 0 && !t.is_empty() && !t.starts_with('*') && !t.starts_with("//") {
            let key: String = t.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !key.is_empty() && t[key.len()..].trim_start().starts_with(['?', ':']) {
                out.insert(key);
            }
        }
        depth += t.matches('{').count();
        depth = depth.saturating_sub(t.matches('}').count());
    }
    Some(out)
}

fn ts_union(dts: &str, name: &str) -> Option<BTreeSet<String>> {
    let line = dts.lines().find(|l| l.starts_with(&format!("export type {name} = ")))?;
    Some(line.split('=').nth(1).unwrap().split('|').map(|v| v.trim().trim_matches('\'').to_string()).collect())
}

#[test]
fn typescript_declarations_match_the_rust_types() {
    let dts = read("bindings-node/header.d.ts");
    let mut problems = Vec::new();
    let option_structs = schemas!(
        ImportOptions,
        ImageImportOptions,
        RegisterOptions,
        PresetOptions,
        ExportOptions,
        ImportBundleOptions,
        ModelFilter,
        LoraConfig,
        TrainSpec,
        ImageTrainOptions,
        JobFilter,
        GeneratorOptions,
        GenerationConfig,
        GenerationFilter,
        HomeOptions,
        SplitOptions,
        DeleteOptions,
        ScoreOptions,
        ImageGeneratorOptions,
        ImageRequest,
        ImageAdapter,
        ClassifierConfig,
        PredictorOptions,
        PredictionFilter,
        AccuracyOptions,
    );
    let option_structs =
        option_structs.into_iter().chain([("DriftOptions", schema_of::<anneal::types::DriftOptions>())]);
    for (name, schema) in structs().into_iter().chain(option_structs) {
        let want: BTreeSet<String> = fields(&schema).iter().map(|f| camel(f)).collect();
        match ts_interface(&dts, name) {
            None => problems.push(format!("interface {name} is missing")),
            Some(got) if got != want => problems.push(format!("{name}: d.ts has {got:?}, Rust has {want:?}")),
            Some(_) => {}
        }
    }
    for (name, schema) in enums() {
        if let Some(got) = ts_union(&dts, name) {
            if got != values(&schema) {
                problems.push(format!("{name}: d.ts has {got:?}, Rust has {:?}", values(&schema)));
            }
        }
    }
    // Events: one member of the AnnealEvent union per variant.
    let union = &dts[dts.find("export type AnnealEvent =").unwrap()..];
    let union = &union[..union.find("\n\n").unwrap()];
    for (tag, want) in variants(&schema_of::<anneal::Event>()) {
        let want: BTreeSet<String> = want.iter().map(|f| camel(f)).collect();
        let Some(member) = union.lines().find(|l| l.contains(&format!("type: '{tag}'"))) else {
            problems.push(format!("AnnealEvent has no `{tag}` member"));
            continue;
        };
        let inner = &member[member.find('{').unwrap() + 1..member.rfind('}').unwrap()];
        let mut got = BTreeSet::new();
        let mut depth = 0;
        for part in inner.split(';') {
            if depth == 0 {
                let key: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !key.is_empty() {
                    got.insert(key);
                }
            }
            depth += part.matches('{').count();
            depth -= part.matches('}').count().min(depth);
        }
        if got != want {
            problems.push(format!("AnnealEvent `{tag}`: d.ts has {got:?}, Rust has {want:?}"));
        }
    }
    assert!(problems.is_empty(), "header.d.ts drifted from the Rust types:\n{}", problems.join("\n"));
}

#[test]
fn the_parsers_read_what_they_should() {
    let pyi = "class A:\n    @property\n    def x(self) -> int: ...\n    def m(self) -> None: ...\n\nclass T(TypedDict):\n    y: int\n";
    assert_eq!(py_attributes(&py_class(pyi, "A").unwrap()), ["x".to_string()].into());
    assert_eq!(py_attributes(&py_class(pyi, "T").unwrap()), ["y".to_string()].into());
    let dts = "export interface I {\n  /** doc */\n  a: string\n  b?: { c: number }\n}\nexport type E = 'x' | 'y'\n";
    assert_eq!(ts_interface(dts, "I").unwrap(), ["a".to_string(), "b".to_string()].into());
    assert_eq!(ts_union(dts, "E").unwrap(), ["x".to_string(), "y".to_string()].into());
}

// ---------------------------------------------------------------- webhooks, alias history, stats, synthetic data

/// Records of the webhooks, alias history, stats and synthetic data APIs: TypedDicts in
/// the Python stub, interfaces in TypeScript.
fn notify_stats_records() -> Vec<(&'static str, Value)> {
    schemas!(
        Webhook,
        Delivery,
        DeliveryReport,
        AliasChange,
        AliasMove,
        HomeStats,
        JobStats,
        DurationStats,
        Activity,
        PresetUsage,
        MethodUsage,
        ModelGenerations,
        AliasStats,
        MonitoringStats,
        ProductionModel,
        ModelCount,
        DatasetLineage,
        ScenarioDrift,
        ExportReport,
        ExportedFile,
    )
}

fn notify_stats_enums() -> Vec<(&'static str, Value)> {
    schemas!(WebhookFormat, DeliveryStatus, AliasAction, ActivityKind, ScenarioDriftKind, ExportFormat)
}

/// Keyword-only parameters of a module-level function of the stub.
fn py_function_kwargs(pyi: &str, function: &str) -> BTreeSet<String> {
    let start = pyi.find(&format!("\ndef {function}(")).unwrap_or_else(|| panic!("no def {function} in the stub"));
    let sig = &pyi[start..];
    let sig = &sig[sig.find('(').unwrap() + 1..sig.find(") ->").unwrap()];
    let mut after_star = false;
    let mut out = BTreeSet::new();
    for p in sig.split(",\n").flat_map(|l| l.split(", ")).map(str::trim) {
        if p == "*" {
            after_star = true;
        } else if after_star && !p.is_empty() {
            out.insert(p.split(':').next().unwrap().trim().to_string());
        }
    }
    out
}

#[test]
fn webhook_stats_and_synthetic_declarations_match_the_rust_types() {
    let pyi = read("bindings-python/python/anneal/_anneal.pyi");
    let dts = read("bindings-node/header.d.ts");
    let mut problems = Vec::new();
    // Records: TypedDicts (snake_case) and interfaces (camelCase).
    for (name, schema) in notify_stats_records().into_iter().chain(schemas!(GenerationConfig)) {
        let want = fields(&schema);
        match py_class(&pyi, name) {
            None => problems.push(format!("stub: class {name} is missing")),
            Some(body) if py_attributes(&body) != want => {
                problems.push(format!("stub {name}: has {:?}, Rust has {want:?}", py_attributes(&body)))
            }
            Some(_) => {}
        }
    }
    let options = schemas!(
        WebhookOptions,
        DeliveryFilter,
        PromoteOptions,
        RollbackOptions,
        StatsOptions,
        ScenarioOptions,
        GenerateDatasetOptions,
    );
    for (name, schema) in notify_stats_records().into_iter().chain(options) {
        let want: BTreeSet<String> = fields(&schema).iter().map(|f| camel(f)).collect();
        match ts_interface(&dts, name) {
            None => problems.push(format!("d.ts: interface {name} is missing")),
            Some(got) if got != want => problems.push(format!("d.ts {name}: has {got:?}, Rust has {want:?}")),
            Some(_) => {}
        }
    }
    // Options given as keyword arguments in Python.
    let bindings_only: BTreeSet<String> = ["on_event", "cancel"].map(String::from).into();
    for (class, method, (name, schema)) in [
        ("Webhooks", "add", schemas!(WebhookOptions).remove(0)),
        ("Webhooks", "deliveries", schemas!(DeliveryFilter).remove(0)),
        ("Home", "stats", schemas!(StatsOptions).remove(0)),
        ("ModelRegistry", "promote", schemas!(PromoteOptions).remove(0)),
        ("ModelRegistry", "rollback", schemas!(RollbackOptions).remove(0)),
        ("DatasetStore", "generate", schemas!(GenerateDatasetOptions).remove(0)),
    ] {
        let got: BTreeSet<String> = py_kwargs(&pyi, class, method).difference(&bindings_only).cloned().collect();
        if got != fields(&schema) {
            problems.push(format!("stub {class}.{method} ({name}): has {got:?}, Rust has {:?}", fields(&schema)));
        }
    }
    let scenario = fields(&schema_of::<anneal::ScenarioOptions>());
    for function in ["synthetic_scenario", "write_synthetic_scenario"] {
        let got = py_function_kwargs(&pyi, function);
        if got != scenario {
            problems.push(format!("stub {function}: has {got:?}, Rust has {scenario:?}"));
        }
    }
    // Enums: literal unions in both, required.
    for (name, schema) in notify_stats_enums() {
        let want = values(&schema);
        if py_literal(&pyi, name).as_ref() != Some(&want) {
            problems.push(format!("stub {name}: has {:?}, Rust has {want:?}", py_literal(&pyi, name)));
        }
        if ts_union(&dts, name).as_ref() != Some(&want) {
            problems.push(format!("d.ts {name}: has {:?}, Rust has {want:?}", ts_union(&dts, name)));
        }
    }
    assert!(problems.is_empty(), "declarations drifted from the Rust types:\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------- monitors

/// Policies, reports and records of the monitors: TypedDicts in the Python stub,
/// interfaces in TypeScript.
fn monitor_records() -> Vec<(&'static str, Value)> {
    schemas!(
        RetrainTriggers,
        RetrainGuards,
        RetrainAction,
        GatePolicy,
        RetrainPolicy,
        TickReport,
        MonitorRecord,
        MonitorDecision,
    )
}

#[test]
fn monitor_declarations_match_the_rust_types() {
    let pyi = read("bindings-python/python/anneal/_anneal.pyi");
    let dts = read("bindings-node/header.d.ts");
    let mut problems = Vec::new();
    for (name, schema) in monitor_records() {
        let want = fields(&schema);
        match py_class(&pyi, name) {
            None => problems.push(format!("stub: class {name} is missing")),
            Some(body) if py_attributes(&body) != want => {
                problems.push(format!("stub {name}: has {:?}, Rust has {want:?}", py_attributes(&body)))
            }
            Some(_) => {}
        }
    }
    for (name, schema) in monitor_records().into_iter().chain(schemas!(MonitorOptions, TickOptions)) {
        let want: BTreeSet<String> = fields(&schema).iter().map(|f| camel(f)).collect();
        match ts_interface(&dts, name) {
            None => problems.push(format!("d.ts: interface {name} is missing")),
            Some(got) if got != want => problems.push(format!("d.ts {name}: has {got:?}, Rust has {want:?}")),
            Some(_) => {}
        }
    }
    // Options given as keyword arguments in Python.
    let bindings_only: BTreeSet<String> = ["on_event", "cancel"].map(String::from).into();
    for (class, method, (name, schema)) in [
        ("Monitors", "create", schemas!(MonitorOptions).remove(0)),
        ("Monitor", "tick", schemas!(TickOptions).remove(0)),
    ] {
        let got: BTreeSet<String> = py_kwargs(&pyi, class, method).difference(&bindings_only).cloned().collect();
        if got != fields(&schema) {
            problems.push(format!("stub {class}.{method} ({name}): has {got:?}, Rust has {:?}", fields(&schema)));
        }
    }
    // Enums: literal unions in both, required; the gate's metrics likewise.
    let gate_metrics: BTreeSet<String> = anneal::types::GATE_METRICS.iter().map(|m| m.to_string()).collect();
    let enums = schemas!(PromotionMode, TickOutcome, DecisionKind)
        .into_iter()
        .map(|(name, schema)| (name, values(&schema)))
        .chain([("GateMetric", gate_metrics)]);
    for (name, want) in enums {
        if py_literal(&pyi, name).as_ref() != Some(&want) {
            problems.push(format!("stub {name}: has {:?}, Rust has {want:?}", py_literal(&pyi, name)));
        }
        if ts_union(&dts, name).as_ref() != Some(&want) {
            problems.push(format!("d.ts {name}: has {:?}, Rust has {want:?}", ts_union(&dts, name)));
        }
    }
    assert!(problems.is_empty(), "monitor declarations drifted from the Rust types:\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------- timeline, plot, learn, feeds

/// The timeline's records, `learn`'s lineage, a monitor's feeds and the options of
/// `timeline`, `plot_timeline` and `learn`: TypedDicts in the Python stub (the options
/// also as keyword arguments), interfaces in TypeScript.
#[test]
fn timeline_learn_and_feed_declarations_match_the_rust_types() {
    let pyi = read("bindings-python/python/anneal/_anneal.pyi");
    let dts = read("bindings-node/header.d.ts");
    let mut problems = Vec::new();
    let types = schemas!(
        Timeline,
        AccuracyPoint,
        DriftPoint,
        EvaluationPoint,
        TimelineEvent,
        VersionAccuracy,
        TimelineOptions,
        PlotOptions,
        LearnOptions,
        LearnLineage,
        MonitorFeed,
    );
    for (name, schema) in types {
        let want = fields(&schema);
        match py_class(&pyi, name) {
            None => problems.push(format!("stub: class {name} is missing")),
            Some(body) if py_attributes(&body) != want => {
                problems.push(format!("stub {name}: has {:?}, Rust has {want:?}", py_attributes(&body)))
            }
            Some(_) => {}
        }
        let want: BTreeSet<String> = want.iter().map(|f| camel(f)).collect();
        match ts_interface(&dts, name) {
            None => problems.push(format!("d.ts: interface {name} is missing")),
            Some(got) if got != want => problems.push(format!("d.ts {name}: has {got:?}, Rust has {want:?}")),
            Some(_) => {}
        }
    }
    // Keyword arguments in Python: `plot_timeline` takes both option structs.
    let timeline = fields(&schema_of::<anneal::TimelineOptions>());
    let plot: BTreeSet<String> = timeline.union(&fields(&schema_of::<anneal::PlotOptions>())).cloned().collect();
    for (method, want) in
        [("timeline", timeline), ("plot_timeline", plot), ("learn", fields(&schema_of::<anneal::LearnOptions>()))]
    {
        let got = py_kwargs(&pyi, "Continual", method);
        if got != want {
            problems.push(format!("stub Continual.{method}: has {got:?}, Rust has {want:?}"));
        }
    }
    let want = values(&schema_of::<anneal::TimelineEventKind>());
    if py_literal(&pyi, "TimelineEventKind").as_ref() != Some(&want) {
        problems.push(format!(
            "stub TimelineEventKind: has {:?}, Rust has {want:?}",
            py_literal(&pyi, "TimelineEventKind")
        ));
    }
    if ts_union(&dts, "TimelineEventKind").as_ref() != Some(&want) {
        problems
            .push(format!("d.ts TimelineEventKind: has {:?}, Rust has {want:?}", ts_union(&dts, "TimelineEventKind")));
    }
    assert!(problems.is_empty(), "declarations drifted from the Rust types:\n{}", problems.join("\n"));
}
