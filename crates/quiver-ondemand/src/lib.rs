//! quiver-ondemand: the evaluator of on-demand feature views (DESIGN §5 "on-demand").
//!
//! One evaluator computes on-demand features everywhere: offline over a whole training
//! set, online over the rows of one request. An expression is SQL text, parsed and typed
//! by DataFusion against the Arrow schema of the view's inputs, compiled once into a
//! physical expression, then evaluated over any number of [`RecordBatch`]es.
//!
//! ```
//! use arrow::array::{Array, AsArray, Float64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Float64Type, Schema};
//! use quiver_core::model::OnDemandFeatureView;
//! use quiver_ondemand::CompiledOdfv;
//! use std::sync::Arc;
//!
//! let def: OnDemandFeatureView = serde_json::from_str(r#"{
//!     "name": "trip_context",
//!     "sources": [{"request": "trip_request"}, "driver_hourly_stats"],
//!     "features": [{"name": "score", "dtype": "float64",
//!                   "expr": "conv_rate * distance_km"}]
//! }"#).unwrap();
//! // Request fields by name, source-view features as `view__feature`.
//! let inputs = Schema::new(vec![
//!     Field::new("distance_km", DataType::Float64, true),
//!     Field::new("driver_hourly_stats__conv_rate", DataType::Float64, true),
//! ]);
//! let odfv = CompiledOdfv::compile(&def, &inputs).unwrap();
//! let batch = RecordBatch::try_new(Arc::new(inputs), vec![
//!     Arc::new(Float64Array::from(vec![Some(2.0), None])),
//!     Arc::new(Float64Array::from(vec![Some(0.5), Some(0.5)])),
//! ]).unwrap();
//! let out = odfv.evaluate(&batch).unwrap();
//! let score = out[0].as_primitive::<Float64Type>();
//! assert_eq!(score.value(0), 1.0);
//! assert!(score.is_null(1)); // nulls propagate
//! ```
//!
//! # Inputs and their names
//!
//! The input schema given to [`CompiledOdfv::compile`] has one column per input:
//!
//! * a request field under its own name (`distance_km`);
//! * a feature of a source view as `view__feature` (`driver_hourly_stats__conv_rate`),
//!   the name [`input_column`] builds.
//!
//! An expression names a request field by its name and a view's feature by its bare
//! name (`conv_rate`) or by `view__feature`. A bare name that is a feature of two source
//! views is ambiguous and must be written `view__feature`. Names are case-sensitive.
//!
//! # The expression language
//!
//! SQL scalar expressions: literals, `+ - * / %`, comparisons, `AND OR NOT`,
//! `IS [NOT] NULL`, `BETWEEN`, `IN (..)`, `CASE WHEN .. THEN .. ELSE .. END`,
//! `CAST(x AS type)` and `TRY_CAST`, and the functions `abs`, `ln`, `exp`, `sqrt`,
//! `pow`/`power`, `round`, `floor`, `ceil`, `least`, `greatest`, `coalesce`, `nullif`
//! and `haversine_km(lat1, lon1, lat2, lon2)` (great-circle distance in km on a sphere
//! of radius 6371.0088 km). Types are coerced as in DataFusion (e.g. `int64 * float64`
//! is float64). Nulls propagate by SQL rules: a null input gives a null result unless
//! the expression handles it (`coalesce`, `CASE .. IS NULL`); a null is never turned
//! into zero.
//!
//! The result is cast to the feature's declared dtype; a result type that cannot be
//! cast to it (a string to float64, a number to bool…) is an error at compile time.
//!
//! # Rows that cannot be computed
//!
//! An error on one row — integer overflow (integer arithmetic is checked, never
//! wrapped), integer division by zero, a value that does not fit the declared type —
//! or a NaN/±infinity float result (`sqrt(-1)`, `ln(0)`, `x / 0.0`) in a feature that
//! does not declare `allow_non_finite: true` makes that row's value null, and only that
//! row's; [`CompiledOdfv::evaluate_reporting`] says which rows and why (online their
//! status is `INVALID`). Write `a / nullif(b, 0)` to make a zero divisor a plain
//! missing value instead.

mod functions;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::{can_cast_types, cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion_common::config::ConfigOptions;
use datafusion_common::tree_node::{Transformed, TreeNode};
use datafusion_common::{DFSchema, DataFusionError, TableReference};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::expr::ScalarFunction;
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_expr::planner::ContextProvider;
use datafusion_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion_expr::{
    AggregateUDF, Expr, ExprSchemable, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF,
};
use datafusion_optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion_physical_expr::{create_physical_expr, PhysicalExpr};
use datafusion_sql::parser::DFParser;
use datafusion_sql::planner::{ParserOptions, PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::ast::{visit_expressions, Expr as SqlExpr};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::tokenizer::{Token, Tokenizer};
use quiver_core::dtype::DType;
use quiver_core::model::{OnDemandFeature, OnDemandFeatureView};
use quiver_core::names::suggest;

pub use functions::{haversine_km, EARTH_RADIUS_KM};

/// The input column name of feature `feature` of source view `view`: `view__feature`.
pub fn input_column(view: &str, feature: &str) -> String {
    format!("{view}__{feature}")
}

/// The names of the functions an expression may call, sorted.
pub fn function_names() -> Vec<String> {
    functions::registry().into_keys().collect()
}

/// What is wrong with one feature's expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExprErrorKind {
    /// The text is not a SQL expression.
    Syntax,
    /// It names a column that is not an input.
    UnknownColumn,
    /// It names a feature by a bare name that two source views share.
    AmbiguousColumn,
    /// It calls a function that is not available.
    UnknownFunction,
    /// Operands or arguments have types the operation does not take.
    Type,
    /// The result's type cannot be cast to the declared dtype.
    Cast,
    /// A construct an on-demand expression cannot use (an alias, a subquery…).
    Unsupported,
    /// More than [`MAX_EXPR_TOKENS`] tokens.
    TooLarge,
}

/// The most tokens (names, literals, operators, parentheses) an on-demand expression
/// may have. It bounds the depth of the expression's tree, which every step from
/// parsing to evaluation walks recursively; a 100-term formula fits.
pub const MAX_EXPR_TOKENS: usize = 256;

/// A problem with one feature of an on-demand feature view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError {
    /// The feature's name.
    pub feature: String,
    /// The feature's field at fault: `expr`, or `dtype` for [`ExprErrorKind::Cast`].
    pub field: &'static str,
    pub kind: ExprErrorKind,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "feature '{}' ({}): {}",
            self.feature, self.field, self.message
        )
    }
}

/// Errors of compiling or evaluating an on-demand feature view.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more features cannot be compiled; every problem is listed.
    #[error("on-demand feature view '{view}': {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        view: String,
        errors: Vec<ExprError>,
    },
    /// The input schema or batch does not fit the view.
    #[error("on-demand feature view '{view}': {message}")]
    Input { view: String, message: String },
    /// Evaluating a feature failed (e.g. an integer division by zero, or a value that
    /// does not fit the declared dtype).
    #[error("on-demand feature view '{view}', feature '{feature}': {message}")]
    Eval {
        view: String,
        feature: String,
        message: String,
    },
}

/// Result alias for quiver-ondemand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One compiled feature.
#[derive(Debug, Clone)]
struct CompiledFeature {
    name: String,
    dtype: DataType,
    allow_non_finite: bool,
    expr: Arc<dyn PhysicalExpr>,
}

/// The rows of one feature that could not be computed: null in the result, status
/// `INVALID` online ([`quiver_core::finite`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InvalidRows {
    /// Their 0-based numbers in the evaluated batch, ascending.
    pub rows: Vec<usize>,
    /// Why the first of them failed, e.g. `row 3: Arithmetic overflow: …`.
    pub first_reason: Option<String>,
}

impl InvalidRows {
    fn add(&mut self, row: usize, reason: impl FnOnce() -> String) {
        self.rows.push(row);
        if self.first_reason.is_none() {
            self.first_reason = Some(format!("row {row}: {}", reason()));
        }
    }
}

/// What [`CompiledOdfv::evaluate_reporting`] computed: one array per feature (invalid
/// rows null) and, per feature, the rows that could not be computed.
#[derive(Clone, Debug)]
pub struct Evaluated {
    pub columns: Vec<ArrayRef>,
    pub invalid: Vec<InvalidRows>,
}

/// An on-demand feature view compiled against the schema of its inputs: parse, plan,
/// type coercion and physical planning happen once, in [`CompiledOdfv::compile`];
/// [`CompiledOdfv::evaluate`] then only runs Arrow kernels. Cheap to clone and safe to
/// share between threads.
#[derive(Debug, Clone)]
pub struct CompiledOdfv {
    name: String,
    input_columns: Vec<String>,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    features: Arc<[CompiledFeature]>,
}

/// The names an expression may use for the inputs.
struct InputNames {
    /// Input column name → type, in input order.
    columns: Vec<(String, DataType)>,
    /// Bare feature name → the input columns it could mean, with their view.
    aliases: BTreeMap<String, Vec<(String, String)>>,
}

impl InputNames {
    fn new(def: &OnDemandFeatureView, inputs: &Schema) -> Self {
        let columns: Vec<(String, DataType)> = inputs
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let mut aliases: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (col, _) in &columns {
            for view in def.source_views() {
                let Some(bare) = col.strip_prefix(&format!("{view}__")) else {
                    continue;
                };
                if !bare.is_empty() && !columns.iter().any(|(c, _)| c == bare) {
                    aliases
                        .entry(bare.to_string())
                        .or_default()
                        .push((view.to_string(), col.clone()));
                }
            }
        }
        InputNames { columns, aliases }
    }

    fn data_type(&self, column: &str) -> Option<&DataType> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, t)| t)
    }

    /// The input column a name means.
    fn resolve(&self, name: &str) -> std::result::Result<&str, (ExprErrorKind, String)> {
        if let Some((c, _)) = self.columns.iter().find(|(c, _)| c == name) {
            return Ok(c);
        }
        match self.aliases.get(name).map(|v| v.as_slice()) {
            Some([(_, col)]) => Ok(col),
            Some(many) if many.len() > 1 => Err((
                ExprErrorKind::AmbiguousColumn,
                format!(
                    "'{name}' is ambiguous: it is a feature of {}; write {}",
                    many.iter()
                        .map(|(v, _)| format!("feature view '{v}'"))
                        .collect::<Vec<_>>()
                        .join(" and "),
                    many.iter()
                        .map(|(_, c)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            )),
            _ => {
                let usable = self.usable_names();
                Err((
                    ExprErrorKind::UnknownColumn,
                    format!(
                        "unknown column '{name}'{} (inputs: {})",
                        suggest(name, usable.iter()),
                        if usable.is_empty() {
                            "none".to_string()
                        } else {
                            usable.join(", ")
                        }
                    ),
                ))
            }
        }
    }

    /// The preferred name of every input: the bare feature name when it is unambiguous,
    /// else the column name.
    fn usable_names(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|(c, _)| {
                self.aliases
                    .iter()
                    .find(|(_, v)| v.len() == 1 && &v[0].1 == c)
                    .map(|(a, _)| a.clone())
                    .unwrap_or_else(|| c.clone())
            })
            .collect()
    }

    /// The schema the SQL planner resolves names against: every column, then every
    /// unambiguous bare name (rewritten to its column after planning).
    fn planning_schema(&self) -> Result<DFSchema, DataFusionError> {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|(c, t)| Field::new(c, t.clone(), true))
            .collect();
        for (alias, cols) in &self.aliases {
            if let [(_, col)] = cols.as_slice() {
                let t = self.data_type(col).expect("alias of an input").clone();
                fields.push(Field::new(alias, t, true));
            }
        }
        DFSchema::try_from(Schema::new(fields))
    }
}

/// The SQL planner's view of the world: the allowed functions and nothing else.
struct Functions {
    udfs: BTreeMap<String, Arc<ScalarUDF>>,
    options: ConfigOptions,
}

impl ContextProvider for Functions {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion_common::Result<Arc<dyn TableSource>> {
        Err(DataFusionError::Plan(format!(
            "tables cannot be read in an on-demand expression ('{name}')"
        )))
    }
    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.udfs.get(&name.to_ascii_lowercase()).cloned()
    }
    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, _name: &str) -> Option<Arc<AggregateUDF>> {
        None
    }
    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }
    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        self.udfs.keys().cloned().collect()
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        vec![]
    }
    fn udaf_names(&self) -> Vec<String> {
        vec![]
    }
    fn udwf_names(&self) -> Vec<String> {
        vec![]
    }
}

/// A DataFusion error's message without its category prefix.
fn df_message(e: &DataFusionError) -> String {
    let msg = e.find_root().message().into_owned();
    msg.trim().to_string()
}

/// Whether a value of type `from` may be stored as `to`: the same type, a number as
/// another number, a bool as a number, anything castable as a string, a timestamp or
/// date as a timestamp, a list as a list of castable items. Strings are not parsed into
/// numbers implicitly: write `CAST(x AS DOUBLE)`.
pub fn castable(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to || from == &Null {
        return true;
    }
    match (from, to) {
        (f, t) if f.is_numeric() && t.is_numeric() => true,
        (Boolean, t) if t.is_numeric() => true,
        (_, Utf8) => can_cast_types(from, to),
        (Timestamp(_, _) | Date32 | Date64, Timestamp(_, _)) => true,
        (Binary | LargeBinary | BinaryView, Binary) => true,
        (List(_) | LargeList(_) | FixedSizeList(_, _), List(_)) => can_cast_types(from, to),
        _ => false,
    }
}

/// A planned (logical, coerced) feature expression.
struct Planned {
    name: String,
    dtype: DataType,
    allow_non_finite: bool,
    expr: Expr,
}

fn plan_feature(
    f: &OnDemandFeature,
    names: &InputNames,
    functions: &Functions,
    planning: &DFSchema,
    typing: &DFSchema,
) -> std::result::Result<Planned, ExprError> {
    let err = |kind, message: String| ExprError {
        feature: f.name.clone(),
        field: if kind == ExprErrorKind::Cast {
            "dtype"
        } else {
            "expr"
        },
        kind,
        message,
    };
    if f.expr.trim().is_empty() {
        return Err(err(ExprErrorKind::Syntax, "the expression is empty".into()));
    }
    // Parsing, planning, evaluating and dropping an expression recurse once per level
    // of its tree, and a chain of N operators is N levels deep: bounding the tokens
    // bounds the depth, so no expression can exhaust a thread's stack.
    let tokens = Tokenizer::new(&GenericDialect {}, &f.expr)
        .tokenize()
        .map_err(|e| {
            err(
                ExprErrorKind::Syntax,
                format!("syntax error in {:?}: {e}", f.expr),
            )
        })?;
    let n = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .count();
    if n > MAX_EXPR_TOKENS {
        return Err(err(
            ExprErrorKind::TooLarge,
            format!(
                "the expression has {n} tokens (names, literals, operators, parentheses), \
                 more than the {MAX_EXPR_TOKENS} an on-demand feature may have: split it \
                 into several features"
            ),
        ));
    }
    let parsed =
        DFParser::parse_sql_into_expr_with_dialect(&f.expr, &GenericDialect {}).map_err(|e| {
            err(
                ExprErrorKind::Syntax,
                format!("syntax error in {:?}: {}", f.expr, df_message(&e)),
            )
        })?;
    if let Some(alias) = parsed.alias {
        return Err(err(
            ExprErrorKind::Unsupported,
            format!("an expression cannot be given a name ('AS {alias}'): the feature's name is its name"),
        ));
    }
    let ast = parsed.expr;

    // Names and functions are checked on the text's own terms before planning.
    let mut problem: Option<ExprError> = None;
    let _ = visit_expressions(&ast, |e: &SqlExpr| {
        let found = match e {
            SqlExpr::Identifier(id) => names.resolve(&id.value).err().map(|(kind, m)| err(kind, m)),
            SqlExpr::CompoundIdentifier(parts) => {
                let joined = parts
                    .iter()
                    .map(|p| p.value.as_str())
                    .collect::<Vec<_>>()
                    .join("__");
                Some(err(
                    ExprErrorKind::UnknownColumn,
                    format!(
                        "unknown column '{}': name a view's feature as {joined}, not with a '.'",
                        parts
                            .iter()
                            .map(|p| p.value.as_str())
                            .collect::<Vec<_>>()
                            .join(".")
                    ),
                ))
            }
            SqlExpr::Function(func) => {
                let name = func.name.to_string().to_ascii_lowercase();
                if functions.udfs.contains_key(&name) {
                    None
                } else {
                    let known: Vec<String> = functions
                        .udfs
                        .iter()
                        .filter(|(k, v)| *k == v.name())
                        .map(|(k, _)| k.clone())
                        .collect();
                    Some(err(
                        ExprErrorKind::UnknownFunction,
                        format!(
                            "unknown function '{}'{} (functions: {})",
                            func.name,
                            suggest(&name, functions.udfs.keys()),
                            known.join(", ")
                        ),
                    ))
                }
            }
            SqlExpr::Subquery(_) | SqlExpr::Exists { .. } | SqlExpr::InSubquery { .. } => {
                Some(err(
                    ExprErrorKind::Unsupported,
                    "subqueries are not allowed in an on-demand expression".into(),
                ))
            }
            _ => None,
        };
        match found {
            Some(e) => {
                problem = Some(e);
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    });
    if let Some(p) = problem {
        return Err(p);
    }

    let options = ParserOptions::new()
        .with_enable_ident_normalization(false)
        .with_map_string_types_to_utf8view(false);
    let planner = SqlToRel::new_with_options(functions, options);
    let expr = planner
        .sql_to_expr(ast, planning, &mut PlannerContext::new())
        .map_err(|e| {
            let kind = match e.find_root() {
                DataFusionError::NotImplemented(_) => ExprErrorKind::Unsupported,
                _ => ExprErrorKind::Type,
            };
            err(kind, df_message(&e))
        })?;

    // Bare feature names → their input columns.
    let expr = expr
        .transform_up(|e| match e {
            Expr::Column(c) if c.relation.is_none() => match names.resolve(&c.name) {
                Ok(col) if col != c.name => Ok(Transformed::yes(Expr::Column(
                    datafusion_common::Column::new_unqualified(col),
                ))),
                Ok(_) => Ok(Transformed::no(Expr::Column(c))),
                Err((_, m)) => Err(DataFusionError::Plan(m)),
            },
            Expr::Column(c) => Err(DataFusionError::Plan(format!("unknown column '{c}'"))),
            other => Ok(Transformed::no(other)),
        })
        .map_err(|e| err(ExprErrorKind::UnknownColumn, df_message(&e)))?
        .data;

    // Types: coerce, expand functions defined by rewriting (coalesce → CASE), coerce
    // what that produced.
    let coerce = |e: Expr| {
        e.rewrite(&mut TypeCoercionRewriter::new(typing))
            .map(|t| t.data)
            .map_err(|e| err(ExprErrorKind::Type, df_message(&e)))
    };
    let expr = coerce(expr)?;
    let context = SimplifyContext::builder()
        .with_schema(Arc::new(typing.clone()))
        .build();
    let expr = expr
        .transform_up(|e| match e {
            Expr::ScalarFunction(ScalarFunction { func, args }) => {
                match func.simplify(args, &context)? {
                    ExprSimplifyResult::Simplified(x) => Ok(Transformed::yes(x)),
                    ExprSimplifyResult::Original(args) => {
                        Ok(Transformed::no(Expr::ScalarFunction(ScalarFunction {
                            func,
                            args,
                        })))
                    }
                }
            }
            other => Ok(Transformed::no(other)),
        })
        .map_err(|e| err(ExprErrorKind::Type, df_message(&e)))?
        .data;
    let expr = coerce(expr)?;
    let result = expr
        .get_type(typing)
        .map_err(|e| err(ExprErrorKind::Type, df_message(&e)))?;
    let declared = f.dtype.to_arrow();
    if !castable(&result, &declared) {
        let shown = DType::from_arrow(&result)
            .map(|t| t.to_string())
            .unwrap_or_else(|| result.to_string());
        return Err(err(
            ExprErrorKind::Cast,
            format!(
                "the expression's type is {shown}, which cannot be stored as the declared {}{}",
                f.dtype,
                if matches!(
                    result,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) {
                    " (write CAST(... AS type) to parse a string)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(Planned {
        name: f.name.clone(),
        dtype: declared,
        allow_non_finite: f.allow_non_finite,
        expr,
    })
}

impl CompiledOdfv {
    /// Compiles every feature of `def` against `inputs`, the schema of the input batches
    /// (request fields by name, source-view features as `view__feature`; see the crate
    /// documentation). Every feature is checked; all problems are returned together in
    /// [`Error::Invalid`]. Input columns the expressions do not use are ignored.
    pub fn compile(def: &OnDemandFeatureView, inputs: &Schema) -> Result<Self> {
        let input_err = |message: String| Error::Input {
            view: def.name.clone(),
            message,
        };
        for (i, f) in inputs.fields().iter().enumerate() {
            if inputs.fields()[..i].iter().any(|g| g.name() == f.name()) {
                return Err(input_err(format!(
                    "the input column '{}' appears twice",
                    f.name()
                )));
            }
        }
        let names = InputNames::new(def, inputs);
        let functions = Functions {
            udfs: functions::registry(),
            options: ConfigOptions::default(),
        };
        let planning = names
            .planning_schema()
            .map_err(|e| input_err(df_message(&e)))?;
        let typing = DFSchema::try_from(Schema::new(
            names
                .columns
                .iter()
                .map(|(c, t)| Field::new(c, t.clone(), true))
                .collect::<Vec<_>>(),
        ))
        .map_err(|e| input_err(df_message(&e)))?;

        let mut errors = Vec::new();
        let mut planned = Vec::new();
        for (i, f) in def.features.iter().enumerate() {
            if def.features[..i].iter().any(|g| g.name == f.name) {
                errors.push(ExprError {
                    feature: f.name.clone(),
                    field: "name",
                    kind: ExprErrorKind::Unsupported,
                    message: format!("duplicate feature '{}'", f.name),
                });
                continue;
            }
            match plan_feature(f, &names, &functions, &planning, &typing) {
                Ok(p) => planned.push(p),
                Err(e) => errors.push(e),
            }
        }

        // The columns any feature reads, in input order: the evaluation batch.
        let mut used: Vec<String> = Vec::new();
        for p in &planned {
            for c in p.expr.column_refs() {
                if !used.contains(&c.name) {
                    used.push(c.name.clone());
                }
            }
        }
        let input_fields: Vec<Field> = names
            .columns
            .iter()
            .filter(|(c, _)| used.contains(c))
            .map(|(c, t)| Field::new(c, t.clone(), true))
            .collect();
        let input_columns: Vec<String> = input_fields.iter().map(|f| f.name().clone()).collect();
        let input_schema = Arc::new(Schema::new(input_fields));
        let exec_schema = DFSchema::try_from(input_schema.as_ref().clone())
            .map_err(|e| input_err(df_message(&e)))?;

        // Physical expressions, each tried once on a row of nulls so that type errors
        // that only the kernels detect surface now rather than at serving time.
        let probe = batch_of(
            &input_schema,
            input_schema
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), 1))
                .collect(),
            1,
        )
        .map_err(|e| input_err(e.to_string()))?;
        let props = ExecutionProps::new();
        let ctx = PhysicalPlanningContext::default();
        let mut features = Vec::new();
        for p in planned {
            let name = p.name.clone();
            let type_err = |m: String| ExprError {
                feature: name.clone(),
                field: "expr",
                kind: ExprErrorKind::Type,
                message: m,
            };
            let expr = match create_physical_expr(&p.expr, &exec_schema, &props, &ctx)
                .and_then(|e| checked_arithmetic(e, exec_schema.as_arrow()))
            {
                Ok(e) => e,
                Err(e) => {
                    errors.push(type_err(df_message(&e)));
                    continue;
                }
            };
            let feature = CompiledFeature {
                name: p.name,
                dtype: p.dtype,
                allow_non_finite: p.allow_non_finite,
                expr,
            };
            match eval_whole(&feature, &probe) {
                Ok(_) => features.push(feature),
                Err(m) => errors.push(type_err(m)),
            }
        }
        if !errors.is_empty() {
            return Err(Error::Invalid {
                view: def.name.clone(),
                errors,
            });
        }
        let output_schema = Arc::new(Schema::new(
            features
                .iter()
                .map(|f| Field::new(&f.name, f.dtype.clone(), true))
                .collect::<Vec<_>>(),
        ));
        Ok(CompiledOdfv {
            name: def.name.clone(),
            input_columns,
            input_schema,
            output_schema,
            features: features.into(),
        })
    }

    /// The view's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The input columns the expressions read, in input-schema order: the columns
    /// [`evaluate`](Self::evaluate) needs.
    pub fn input_columns(&self) -> &[String] {
        &self.input_columns
    }

    /// The read columns with the types they were compiled for.
    pub fn input_schema(&self) -> &SchemaRef {
        &self.input_schema
    }

    /// One field per feature, in definition order, with its declared type.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    /// Computes every feature over `batch`, which must hold the
    /// [`input_columns`](Self::input_columns) (found by name; other columns are ignored)
    /// with their compiled types or a type that widens to them without loss. Returns
    /// one array per feature, in definition order, of the declared dtype and
    /// `batch.num_rows()` long. A row the expression fails on is null
    /// ([`evaluate_reporting`](Self::evaluate_reporting) tells which).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.evaluate_reporting(batch).map(|e| e.columns)
    }

    /// Like [`evaluate`](Self::evaluate), telling per feature which rows could not be
    /// computed: a runtime error on the row (integer overflow, integer division by
    /// zero, a result that does not fit the declared type) or a non-finite float result
    /// where the feature does not allow one. Those rows are null; the others are what
    /// the expression gives, so one bad row never fails the others.
    pub fn evaluate_reporting(&self, batch: &RecordBatch) -> Result<Evaluated> {
        let n = batch.num_rows();
        let mut columns = Vec::with_capacity(self.input_columns.len());
        for field in self.input_schema.fields() {
            let name = field.name();
            let col = batch.column_by_name(name).ok_or_else(|| Error::Input {
                view: self.name.clone(),
                message: format!(
                    "the input has no column '{name}' (it reads {}; the input has {})",
                    self.input_columns.join(", "),
                    batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
            columns.push(self.conform(name, col, field.data_type())?);
        }
        let input = batch_of(&self.input_schema, columns, n).map_err(|e| Error::Input {
            view: self.name.clone(),
            message: e.to_string(),
        })?;
        let mut out = Evaluated {
            columns: Vec::with_capacity(self.features.len()),
            invalid: Vec::with_capacity(self.features.len()),
        };
        for f in self.features.iter() {
            let (column, invalid) = eval_feature(f, &input).map_err(|message| Error::Eval {
                view: self.name.clone(),
                feature: f.name.clone(),
                message,
            })?;
            out.columns.push(column);
            out.invalid.push(invalid);
        }
        Ok(out)
    }

    /// Like [`evaluate`](Self::evaluate), as a batch of [`output_schema`](Self::output_schema).
    pub fn evaluate_batch(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns = self.evaluate(batch)?;
        batch_of(&self.output_schema, columns, batch.num_rows()).map_err(|e| Error::Input {
            view: self.name.clone(),
            message: e.to_string(),
        })
    }

    /// An input column as the compiled type: as is, or widened when its type is a
    /// lossless widening of it (int32 → int64, float32 → float64, other timestamp
    /// units…).
    fn conform(&self, name: &str, col: &ArrayRef, want: &DataType) -> Result<ArrayRef> {
        if col.data_type() == want {
            return Ok(Arc::clone(col));
        }
        let widens = col.data_type() == &DataType::Null
            || matches!(
                (DType::from_arrow(want), DType::from_arrow(col.data_type())),
                (Some(w), Some(g)) if w.accepts(&g)
            );
        if !widens {
            return Err(Error::Input {
                view: self.name.clone(),
                message: format!(
                    "input column '{name}' is {}, expected {want}",
                    col.data_type()
                ),
            });
        }
        cast_with_options(col, want, &CastOptions::default()).map_err(|e| Error::Input {
            view: self.name.clone(),
            message: format!("input column '{name}': {e}"),
        })
    }
}

fn batch_of(
    schema: &SchemaRef,
    columns: Vec<ArrayRef>,
    rows: usize,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
}

/// Integer `+ - *` checked for overflow (DataFusion wraps them by default), so that an
/// overflowing row fails and is reported, never served as a wrapped number.
fn checked_arithmetic(
    expr: Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> datafusion_common::Result<Arc<dyn PhysicalExpr>> {
    use datafusion_expr::Operator;
    use datafusion_physical_expr::expressions::{BinaryExpr, Literal, NegativeExpr};
    expr.transform_up(|e| {
        if let Some(b) = e.downcast_ref::<BinaryExpr>() {
            let checked = BinaryExpr::new(Arc::clone(b.left()), *b.op(), Arc::clone(b.right()))
                .with_fail_on_overflow(true);
            return Ok(Transformed::yes(Arc::new(checked) as Arc<dyn PhysicalExpr>));
        }
        if let Some(n) = e.downcast_ref::<NegativeExpr>() {
            // `-x` wraps at the integer minimum: written `0 - x`, checked.
            let arg = Arc::clone(n.arg());
            let t = arg.data_type(schema);
            if let Ok(t) = t.as_ref() {
                if t.is_signed_integer() {
                    let zero = Arc::new(Literal::new(datafusion_common::ScalarValue::new_zero(t)?));
                    let checked =
                        BinaryExpr::new(zero, Operator::Minus, arg).with_fail_on_overflow(true);
                    return Ok(Transformed::yes(Arc::new(checked) as Arc<dyn PhysicalExpr>));
                }
            }
        }
        Ok(Transformed::no(e))
    })
    .map(|t| t.data)
}

/// Evaluates one feature over `input`, row by row where it must: when the whole batch
/// fails, halves are evaluated until each failing row is alone, so the cost is the
/// batch plus a logarithmic number of evaluations per failing row. Failing rows and,
/// unless the feature allows them, rows with a non-finite float are null and reported.
fn eval_feature(
    f: &CompiledFeature,
    input: &RecordBatch,
) -> std::result::Result<(ArrayRef, InvalidRows), String> {
    let mut invalid = InvalidRows::default();
    let column = match eval_whole(f, input) {
        Ok(c) => c,
        Err(_) => {
            let mut parts = Vec::new();
            eval_split(f, input, 0, input.num_rows(), &mut parts, &mut invalid);
            let parts: Vec<&dyn arrow::array::Array> = parts.iter().map(|a| a.as_ref()).collect();
            arrow::compute::concat(&parts).map_err(|e| e.to_string())?
        }
    };
    if f.allow_non_finite || !quiver_core::finite::holds_floats(&f.dtype) {
        return Ok((column, invalid));
    }
    let mut bad = Vec::new();
    quiver_core::finite::for_each_non_finite(column.as_ref(), |row, _| {
        bad.push(row);
        true
    });
    if bad.is_empty() {
        return Ok((column, invalid));
    }
    let mut mask = vec![false; column.len()];
    for &row in &bad {
        mask[row] = true;
        invalid.add(row, || {
            let v = quiver_core::value::value_at(column.as_ref(), row)
                .map(|v| v.to_string())
                .unwrap_or_default();
            format!(
                "the result {v} is not a finite number (declare allow_non_finite: true to keep it)"
            )
        });
    }
    invalid.rows.sort_unstable();
    let column =
        arrow::compute::nullif(column.as_ref(), &mask.into()).map_err(|e| e.to_string())?;
    Ok((column, invalid))
}

/// Evaluates `f` over rows `offset..offset + len` of `input` into `parts`, a failing
/// single row as a null recorded in `invalid`.
fn eval_split(
    f: &CompiledFeature,
    input: &RecordBatch,
    offset: usize,
    len: usize,
    parts: &mut Vec<ArrayRef>,
    invalid: &mut InvalidRows,
) {
    if len == 0 {
        return;
    }
    match eval_whole(f, &input.slice(offset, len)) {
        Ok(c) => parts.push(c),
        Err(reason) if len == 1 => {
            parts.push(new_null_array(&f.dtype, 1));
            invalid.add(offset, || reason);
        }
        Err(_) => {
            let half = len / 2;
            eval_split(f, input, offset, half, parts, invalid);
            eval_split(f, input, offset + half, len - half, parts, invalid);
        }
    }
}

/// Evaluates one feature over all of `input` and casts the result to its declared type.
/// Casts are checked: a value that does not fit (an out-of-range number) is an error,
/// never a silent null.
fn eval_whole(f: &CompiledFeature, input: &RecordBatch) -> std::result::Result<ArrayRef, String> {
    let value = f
        .expr
        .evaluate(input)
        .and_then(|v| v.into_array(input.num_rows()))
        .map_err(|e| df_message(&e))?;
    if value.data_type() == &f.dtype {
        return Ok(value);
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(&value, &f.dtype, &options).map_err(|e| {
        format!(
            "cannot store the result ({}) as {}: {e}",
            value.data_type(),
            f.dtype
        )
    })
}

#[cfg(test)]
mod tests;
