//! The `#[strata::cached]` attribute macro. Use it through the `strata-cache` crate (library
//! `strata`; its `macros` feature, on by default: `strata-cache = "0.1"`), as `strata::cached`:
//! the code it generates calls `strata`'s API.

use proc_macro::TokenStream;
use proc_macro2::{Delimiter, Group, Span, TokenStream as TokenStream2, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, FnArg, GenericParam, Ident, ItemFn, Lit, LitStr, Pat, ReturnType, Token, Type};

/// Caches an `async fn`'s results in a [`strata::Cache`], under a key built from its arguments.
///
/// The body becomes the loader of [`Cache::get_or_set`]: a call whose key is cached returns the
/// cached value without running the body; a miss runs the body once per key across every
/// concurrent caller (in this process and, with leases, across processes) and stores its value
/// with the TTL. Errors are returned, never cached.
///
/// ```ignore
/// use strata::{Cache, cached};
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct User { id: u64, name: String }
///
/// /// Key `shop:v1:user:{id}`, medium TTL.
/// #[cached(app = "shop", namespace = "user", ttl = "medium")]
/// async fn load_user(cache: &Cache, id: u64) -> Result<User, strata::Error> {
///     Ok(User { id, name: "Ada".into() }) // query the database here
/// }
///
/// # async fn demo(cache: &Cache) -> Result<(), strata::Error> {
/// let user = load_user(cache, 42).await?; // runs the body, stores the value
/// let again = load_user(cache, 42).await?; // served by the cache
/// // Invalidation: the same key, through the same schema and arguments.
/// let schema = strata::KeySchema::new("shop", 1)?;
/// cache.delete(&schema.key_for_args("user", &[&42])?).await?;
/// # Ok(()) }
/// ```
///
/// (`strata::cached`'s own documentation has a fuller version of this example, compiled as a
/// test of `strata`.)
///
/// # Attribute
///
/// Every setting is optional: `#[cached]` alone caches under `{crate name}:v1:{fn name}:{args}`
/// for [`Ttl::Medium`].
///
/// | setting | meaning | default |
/// |---|---|---|
/// | `namespace = "user"` | the entity segment of the key (`A-Z a-z 0-9 _ -`, checked at compile time); also the namespace of metrics and [`Cache::invalidate_namespace`] | the function's name |
/// | `app = "shop"`, `version = 2` | the schema: `KeySchema::new(app, version)`, built once | the crate's package name, version 1 |
/// | `schema = EXPR` | the schema as an expression of type `KeySchema` or anything that dereferences to one (`&KeySchema`, a `LazyLock<KeySchema>` static, `self.schema`), evaluated on each call; instead of `app`/`version` | |
/// | `ttl = "short"` | `"short"`, `"medium"`, `"long"` (the cache's [`TtlPolicy`] classes), a duration such as `"90s"`, `"500ms"`, `"5m"`, `"2h"`, `"1d"` ([`Ttl::Custom`]), or any expression that is `Into<Ttl>` (`Duration::from_secs(30)`, `Ttl::Exact(..)`) | `"medium"` |
/// | `cache = EXPR` | the cache: an expression whose reference dereferences to a `Cache` (`cache = self.cache`, `cache = CACHE` for a static, `cache = app.cache`), borrowed for the call (an argument it is a field of is best taken by reference, `app: &App`, when the body uses it too); when it names an argument, that argument is left out of the key | the first argument of type `&Cache` (any path ending in `Cache`) |
/// | `args = [a, b.id, self.tenant]` | the key's parts, each an expression implementing `Display`, in order | every argument but the cache and `self` |
/// | `key = "{id}-{lang}"` | one key part made with `format!` (or any `Display` expression): the caller vouches that different calls format differently; instead of `args` | |
/// | `crate = path` | where `strata` is, when the dependency is renamed | `::strata` |
///
/// # Key
///
/// `app:v{version}:{namespace}:{id}`, with the id made by
/// [`KeySchema::key_for_args`] from the key's parts: each
/// formatted with `Display` and percent-encoded outside `A-Z a-z 0-9 - _ . @ + = /`, an empty one
/// written `~`, joined with `,`; an id longer than 256 bytes is replaced by `#:h` and 32 hex
/// digits of its SHA-256. So any argument text makes a valid key, two calls share a key only
/// when every part formats the same, and `load_user(cache, 42)` is at `shop:v1:user:42`, where
/// `schema.key_for_args("user", &[&42])` (and `schema.key("user", "42")`) find it again, e.g. to
/// delete it. Functions that share a namespace share keys: give each its own, or make their
/// keys differ. **The default namespace is the bare function name**, so two functions of one
/// crate with the same name (in two modules, or two `impl`s' `get`) share keys, and one can
/// return the other's value when their types agree: name the namespace of every function
/// whose name is not unique in the crate.
///
/// A method's receiver is not part of the key (name its fields in `args` when they matter),
/// and neither are generic type parameters: a function generic over its value type is
/// rejected, since its instances would share keys.
///
/// # Errors
///
/// The function keeps its signature `-> Result<T, E>` (or an alias of one), where `T` is a
/// [`CacheValue`] (serde both ways, `Clone`, `Send + Sync + 'static`) and `E` implements
/// `Display` and `From<strata::Error>`:
///
/// - an error of the body is returned **as it is** to the call that ran the body, and is not
///   cached;
/// - the callers that waited on that same load (in-process single-flight) get
///   `E::from(strata::Error)` with `is_loader()`, whose message is the body error's;
/// - the cache's own failures (a value that does not serialize, a loader timeout of
///   [`Freshness`]) are `E::from(strata::Error)`. Redis being down is not
///   one: the body runs and its value is returned.
///
/// `strata::Error`, `anyhow::Error`, `Box<dyn Error + Send + Sync>` and an own error enum with a
/// `From<strata::Error>` variant all work.
/// The body's error is held while the cache finishes the load, so the function's future is
/// `Send` when `E` is `Send` (and the arguments are), as without the macro.
///
/// # Compile errors
///
/// The macro rejects, with an error at the offending tokens: a function that is not `async`;
/// one without a cache (no `&Cache` argument and no `cache = ..`); one without a return type;
/// an unknown or repeated setting; a `namespace` or `app` that is not a valid key segment; an
/// unknown TTL class or duration; `args` together with `key`, or `schema` together with
/// `app`/`version`; a receiver other than `&self` (a body skipped on hits must not be what
/// changes its receiver); a pattern instead of a name for an argument the macro uses; and a
/// return type that mentions a generic type parameter or `impl Trait`. A return type that is
/// not a `Result`, an error type without `From<strata::Error>` and a key part without `Display`
/// are reported by the compiler at that type or argument, with a note saying what the macro
/// needs.
///
/// [`strata::Cache`]: https://docs.rs/strata-cache/latest/strata/struct.Cache.html
/// [`Cache::get_or_set`]: https://docs.rs/strata-cache/latest/strata/struct.Cache.html#method.get_or_set
/// [`Cache::invalidate_namespace`]: https://docs.rs/strata-cache/latest/strata/struct.Cache.html#method.invalidate_namespace
/// [`Ttl::Medium`]: https://docs.rs/strata-cache/latest/strata/enum.Ttl.html#variant.Medium
/// [`Ttl::Custom`]: https://docs.rs/strata-cache/latest/strata/enum.Ttl.html#variant.Custom
/// [`TtlPolicy`]: https://docs.rs/strata-cache/latest/strata/struct.TtlPolicy.html
/// [`CacheValue`]: https://docs.rs/strata-cache/latest/strata/trait.CacheValue.html
/// [`Freshness`]: https://docs.rs/strata-cache/latest/strata/struct.Freshness.html
/// [`KeySchema::key_for_args`]: https://docs.rs/strata-cache/latest/strata/struct.KeySchema.html#method.key_for_args
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = TokenStream2::from(item);
    let expanded = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(func) => Settings::parse_terminated.parse(attr).and_then(|settings| expand(settings, func)),
        Err(err) => {
            Err(syn::Error::new(err.span(), format!("#[strata::cached] applies to an `async fn` with a body ({err})")))
        }
    };
    match expanded {
        Ok(tokens) => tokens.into(),
        // The item as it was, so that its callers do not add errors of their own.
        Err(err) => {
            let mut out = err.to_compile_error();
            out.extend(quote!(#[allow(unused)]));
            out.extend(item);
            out.into()
        }
    }
}

/// A string setting or an expression one.
enum Value {
    Str(LitStr),
    Expr(Expr),
}

/// The settings of one `#[cached(...)]`.
#[derive(Default)]
struct Settings {
    namespace: Option<LitStr>,
    app: Option<LitStr>,
    version: Option<syn::LitInt>,
    schema: Option<Expr>,
    ttl: Option<Value>,
    cache: Option<Expr>,
    args: Option<(Span, Vec<Expr>)>,
    key: Option<Value>,
    krate: Option<syn::Path>,
}

const SETTINGS: &str = "namespace, app, version, schema, ttl, cache, args, key, crate";

impl Settings {
    fn parse_terminated(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut settings = Settings::default();
        let mut errors: Option<syn::Error> = None;
        let mut seen: Vec<String> = Vec::new();
        while !input.is_empty() {
            let name = Ident::parse_any(input)?;
            let text = name.to_string();
            input.parse::<Token![=]>().map_err(|_| {
                syn::Error::new(
                    name.span(),
                    format!("expected `{text} = ...`: every #[strata::cached] setting is `name = value`"),
                )
            })?;
            let value: Expr = input.parse()?;
            if seen.contains(&text) {
                push(&mut errors, syn::Error::new(name.span(), format!("`{text}` is set twice")));
            }
            seen.push(text.clone());
            if let Err(err) = settings.set(&name, &text, value) {
                push(&mut errors, err);
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        match errors {
            Some(err) => Err(err),
            None => Ok(settings),
        }
    }

    fn set(&mut self, name: &Ident, text: &str, value: Expr) -> syn::Result<()> {
        match text {
            "namespace" => self.namespace = Some(string(name, value)?),
            "app" => self.app = Some(string(name, value)?),
            "version" => match value {
                Expr::Lit(ExprLit { lit: Lit::Int(int), .. }) => {
                    int.base10_parse::<u32>().map_err(|_| {
                        syn::Error::new(int.span(), "`version` is the schema version: an integer from 0 to 4294967295")
                    })?;
                    self.version = Some(int);
                }
                other => {
                    return Err(syn::Error::new(
                        other.span(),
                        "`version` must be an integer literal (the N of `app:vN:...`); for a schema computed at run time use `schema = ...`",
                    ));
                }
            },
            "schema" => self.schema = Some(value),
            "ttl" => self.ttl = Some(value_of(value)),
            "cache" => self.cache = Some(value),
            "args" => match value {
                Expr::Array(array) => self.args = Some((array.span(), array.elems.into_iter().collect())),
                other => {
                    return Err(syn::Error::new(
                        other.span(),
                        "`args` is a list of the key's parts: `args = [id, lang]` (use `args = []` for a key without arguments)",
                    ));
                }
            },
            "key" => self.key = Some(value_of(value)),
            "crate" => match value {
                Expr::Path(path) => self.krate = Some(path.path),
                other => return Err(syn::Error::new(other.span(), "`crate` is a path, e.g. `crate = ::my_strata`")),
            },
            other => {
                return Err(syn::Error::new(
                    name.span(),
                    format!("unknown #[strata::cached] setting `{other}`; the settings are: {SETTINGS}"),
                ));
            }
        }
        Ok(())
    }
}

/// An expression as one operand, whatever its precedence (an invisible group: no parentheses
/// for `unused_parens` to flag).
fn operand(expr: &Expr) -> TokenStream2 {
    TokenTree::Group(Group::new(Delimiter::None, expr.to_token_stream())).into()
}

/// The path to `strata`, its tokens at `span` (so that an unmet bound of a call through it is
/// reported there).
fn krate_at(krate: Option<&syn::Path>, span: Span) -> TokenStream2 {
    match krate {
        Some(path) => path.to_token_stream(),
        None => quote_spanned!(span=> ::strata),
    }
}

fn push(errors: &mut Option<syn::Error>, err: syn::Error) {
    match errors {
        Some(errors) => errors.combine(err),
        None => *errors = Some(err),
    }
}

fn string(name: &Ident, value: Expr) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Ok(lit),
        other => {
            Err(syn::Error::new(other.span(), format!("`{name}` must be a string literal, e.g. `{name} = \"user\"`")))
        }
    }
}

fn value_of(value: Expr) -> Value {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Value::Str(lit),
        other => Value::Expr(other),
    }
}

/// `A-Z a-z 0-9 _ -`, 1 to 64 bytes: what `KeySchema` accepts for app and entity segments.
fn check_name(what: &str, name: &str, span: Span) -> syn::Result<()> {
    if name.is_empty() || name.len() > 64 {
        return Err(syn::Error::new(span, format!("the {what} must be 1 to 64 bytes long, not {}", name.len())));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(syn::Error::new(
            span,
            format!("the {what} {name:?} contains {c:?}: a key segment allows A-Z a-z 0-9 _ - only"),
        ));
    }
    Ok(())
}

/// `"short"`, `"medium"`, `"long"` or a duration (`"500ms"`, `"90s"`, `"5m"`, `"2h"`, `"1d"`).
fn ttl_literal(lit: &LitStr, krate: &TokenStream2) -> syn::Result<TokenStream2> {
    let text = lit.value();
    let span = lit.span();
    let class = match text.as_str() {
        "short" => Some(quote!(#krate::Ttl::Short)),
        "medium" => Some(quote!(#krate::Ttl::Medium)),
        "long" => Some(quote!(#krate::Ttl::Long)),
        _ => None,
    };
    if let Some(class) = class {
        return Ok(class);
    }
    let unknown = || {
        syn::Error::new(
            span,
            format!(
                "unknown TTL {text:?}: use \"short\", \"medium\" or \"long\" (the cache's TtlPolicy), a duration such as \"90s\", \"500ms\", \"5m\", \"2h\", \"1d\", or an expression such as `Duration::from_secs(90)`"
            ),
        )
    };
    let digits = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(unknown)?;
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| unknown())?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "d" => number.checked_mul(86_400_000),
        _ => return Err(unknown()),
    }
    .ok_or_else(|| syn::Error::new(span, format!("the TTL {text:?} is too long")))?;
    if millis == 0 {
        return Err(syn::Error::new(span, "a TTL must be longer than zero"));
    }
    Ok(quote!(#krate::Ttl::Custom(::core::time::Duration::from_millis(#millis))))
}

/// Whether a type's tokens name one of `names` or hold `impl`.
fn mentions(tokens: TokenStream2, names: &[Ident]) -> Option<(Span, String)> {
    for tree in tokens {
        match tree {
            TokenTree::Ident(ident) if ident == "impl" => return Some((ident.span(), "impl".into())),
            TokenTree::Ident(ident) if names.contains(&ident) => return Some((ident.span(), ident.to_string())),
            TokenTree::Group(group) => {
                if let Some(found) = mentions(group.stream(), names) {
                    return Some(found);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether `ty` is `&Cache`, `&strata::Cache`, `&::strata::Cache`...
fn is_cache_ref(ty: &Type) -> bool {
    let Type::Reference(reference) = ty else { return false };
    let Type::Path(path) = &*reference.elem else { return false };
    path.qself.is_none()
        && path.path.segments.last().is_some_and(|last| last.ident == "Cache" && last.arguments.is_none())
}

fn arg_name(pat: &Pat, what: &str) -> syn::Result<Ident> {
    match pat {
        Pat::Ident(ident) if ident.by_ref.is_none() && ident.subpat.is_none() => Ok(ident.ident.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            format!(
                "#[strata::cached] needs a plain name for this argument ({what}); bind it to a name and destructure it in the body"
            ),
        )),
    }
}

/// `key_part(&part)`, the call at `span` (where a part without `Display` is reported).
fn key_part(krate: Option<&syn::Path>, span: Span, part: TokenStream2) -> TokenStream2 {
    let at = krate_at(krate, span);
    quote_spanned!(span=> #at::__private::key_part(&#part))
}

fn expand(settings: Settings, func: ItemFn) -> syn::Result<TokenStream2> {
    let mut errors: Option<syn::Error> = None;
    let sig = &func.sig;
    let krate = match &settings.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::strata),
    };

    if sig.asyncness.is_none() {
        push(
            &mut errors,
            syn::Error::new(
                sig.fn_token.span(),
                "#[strata::cached] applies to `async fn` only: the cache is asynchronous (make this function `async`)",
            ),
        );
    }
    if let Some(variadic) = &sig.variadic {
        push(&mut errors, syn::Error::new(variadic.span(), "#[strata::cached] does not take variadic functions"));
    }
    let ret = match &sig.output {
        ReturnType::Type(_, ty) => Some(ty.as_ref().clone()),
        ReturnType::Default => {
            push(
                &mut errors,
                syn::Error::new(
                    sig.paren_token.span.join(),
                    "a #[strata::cached] function must return `Result<T, E>`: `T` is the cached value, `E` the error (add `-> Result<..., ...>`)",
                ),
            );
            None
        }
    };
    let type_params: Vec<Ident> = sig
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) => Some(t.ident.clone()),
            GenericParam::Const(c) => Some(c.ident.clone()),
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    if let Some(ret) = &ret
        && let Some((span, name)) = mentions(ret.to_token_stream(), &type_params)
    {
        let message = if name == "impl" {
            "the cached value must be a named type: `impl Trait` cannot be stored and read back".to_owned()
        } else {
            format!(
                "the return type of a #[strata::cached] function cannot depend on the generic parameter `{name}`: every instance would share the same keys"
            )
        };
        push(&mut errors, syn::Error::new(span, message));
    }

    // The receiver and the typed arguments.
    let mut receiver = false;
    let mut typed: Vec<(&Pat, &Type)> = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                if matches!(&*r.ty, Type::Reference(reference) if reference.mutability.is_none()) {
                    receiver = true;
                } else {
                    push(
                        &mut errors,
                        syn::Error::new_spanned(
                            r,
                            "a #[strata::cached] method must take `&self`: its body is skipped on cache hits, so it must not be what changes the receiver",
                        ),
                    );
                }
            }
            FnArg::Typed(arg) => typed.push((&arg.pat, &arg.ty)),
        }
    }

    // The cache.
    let mut cache_arg: Option<Ident> = None;
    let cache = match &settings.cache {
        Some(expr) => {
            if let Expr::Path(path) = expr
                && let Some(ident) = path.path.get_ident()
                && typed.iter().any(|(pat, _)| matches!(pat, Pat::Ident(p) if p.ident == *ident))
            {
                cache_arg = Some(ident.clone());
            }
            let expr = operand(expr);
            Some(quote!(&#expr))
        }
        None => match typed.iter().find(|(_, ty)| is_cache_ref(ty)) {
            Some((pat, _)) => match arg_name(pat, "the cache") {
                Ok(ident) => {
                    cache_arg = Some(ident.clone());
                    Some(quote!(#ident))
                }
                Err(err) => {
                    push(&mut errors, err);
                    None
                }
            },
            None => {
                let message = if receiver {
                    "#[strata::cached] needs a cache: in a method, name it with `cache = self.cache` (any expression whose reference dereferences to a `Cache`), or take an argument of type `&Cache`"
                } else {
                    "#[strata::cached] needs a cache: an argument of type `&Cache`, or `cache = ...` in the attribute (e.g. `cache = CACHE` for a static, `cache = state.cache`)"
                };
                push(&mut errors, syn::Error::new(sig.paren_token.span.join(), message));
                None
            }
        },
    };

    let err = format_ident!("__strata_err", span = Span::mixed_site());
    // The calls whose bounds are about the return type (a `Result`, an error with
    // `From<strata::Error>`, a cache value) are spanned at it, so that their errors point there.
    let ret_span = ret.as_ref().map_or_else(Span::call_site, Spanned::span);
    let ret_tokens = ret.as_ref().map(ToTokens::to_token_stream).unwrap_or_default();
    let at_ret = krate_at(settings.krate.as_ref(), ret_span);
    let helper = |name: &str| {
        let name = Ident::new(name, ret_span);
        quote_spanned!(ret_span=> #at_ret::__private::#name::<#ret_tokens>)
    };
    let into_err = format_ident!("__strata_into_err", span = Span::mixed_site());
    let fail = helper("fail");
    let fail_call = quote_spanned!(ret_span=> #fail(#into_err(#err)));

    // The schema.
    let cell = format_ident!("__STRATA_SCHEMA", span = Span::mixed_site());
    let schema_ident = format_ident!("__strata_schema", span = Span::mixed_site());
    let schema = match (&settings.schema, &settings.app, &settings.version) {
        (Some(expr), None, None) => {
            let expr = operand(expr);
            Some(quote! {
                let #schema_ident: &#krate::KeySchema = &#expr;
            })
        }
        (Some(expr), _, _) => {
            push(
                &mut errors,
                syn::Error::new(
                    expr.span(),
                    "`schema` names the whole schema; set either `schema` or `app`/`version`, not both",
                ),
            );
            None
        }
        (None, app, version) => {
            let app = match app {
                Some(lit) => check_name("app", &lit.value(), lit.span()).map(|()| lit.value()),
                None => match std::env::var("CARGO_PKG_NAME") {
                    Ok(name) => check_name("crate name (the default app)", &name, Span::call_site())
                        .map_err(|err| syn::Error::new(err.span(), format!("{err}; set `app = \"...\"`")))
                        .map(|()| name),
                    Err(_) => Err(syn::Error::new(
                        Span::call_site(),
                        "no crate name to use as the app (not built by cargo?): set `app = \"...\"` or `schema = ...`",
                    )),
                },
            };
            let version = version.as_ref().map_or(Ok(1), syn::LitInt::base10_parse::<u32>);
            match (app, version) {
                (Ok(app), Ok(version)) => Some(quote! {
                    static #cell: ::std::sync::OnceLock<#krate::KeySchema> = ::std::sync::OnceLock::new();
                    let #schema_ident: &#krate::KeySchema = match #krate::__private::schema(&#cell, #app, #version) {
                        ::core::result::Result::Ok(#schema_ident) => #schema_ident,
                        ::core::result::Result::Err(#err) => return #fail_call,
                    };
                }),
                (Err(err), _) | (_, Err(err)) => {
                    push(&mut errors, err);
                    None
                }
            }
        }
    };

    // The namespace (the entity segment).
    let namespace = match &settings.namespace {
        Some(lit) => check_name("namespace", &lit.value(), lit.span()).map(|()| lit.value()),
        None => {
            let name = sig.ident.unraw().to_string();
            check_name("function name (the default namespace)", &name, sig.ident.span())
                .map_err(|err| syn::Error::new(err.span(), format!("{err}; set `namespace = \"...\"`")))
                .map(|()| name)
        }
    };
    let namespace = namespace.map_err(|err| push(&mut errors, err)).ok();

    // The key's parts.
    let parts: Vec<TokenStream2> = match (&settings.args, &settings.key) {
        (Some((span, _)), Some(_)) => {
            push(
                &mut errors,
                syn::Error::new(*span, "set either `args` (the key's parts) or `key` (one formatted part), not both"),
            );
            Vec::new()
        }
        (Some((_, exprs)), None) => {
            exprs.iter().map(|expr| key_part(settings.krate.as_ref(), expr.span(), operand(expr))).collect()
        }
        (None, Some(Value::Str(lit))) => {
            vec![key_part(settings.krate.as_ref(), lit.span(), quote!(::std::format!(#lit)))]
        }
        (None, Some(Value::Expr(expr))) => vec![key_part(settings.krate.as_ref(), expr.span(), operand(expr))],
        (None, None) => typed
            .iter()
            .filter_map(|(pat, ty)| {
                if let Pat::Ident(p) = pat
                    && cache_arg.as_ref() == Some(&p.ident)
                {
                    return None;
                }
                if cache_arg.is_none() && settings.cache.is_none() && is_cache_ref(ty) {
                    return None;
                }
                match arg_name(pat, "it is part of the key; or choose the key's parts with `args = [...]`") {
                    Ok(ident) => Some(key_part(settings.krate.as_ref(), ident.span(), ident.to_token_stream())),
                    Err(err) => {
                        push(&mut errors, err);
                        None
                    }
                }
            })
            .collect(),
    };

    let ttl = match &settings.ttl {
        None => Some(quote!(#krate::Ttl::Medium)),
        Some(Value::Str(lit)) => ttl_literal(lit, &krate).map_err(|err| push(&mut errors, err)).ok(),
        Some(Value::Expr(expr)) => {
            let span = expr.span();
            let into = quote_spanned!(span=> ::core::convert::Into::<#krate::Ttl>::into);
            let expr = operand(expr);
            Some(quote!(#into(#expr)))
        }
    };

    if let Some(err) = errors {
        return Err(err);
    }
    let (Some(ret), Some(cache), Some(schema), Some(namespace), Some(ttl)) = (ret, cache, schema, namespace, ttl)
    else {
        return Err(syn::Error::new(Span::call_site(), "#[strata::cached]: invalid input"));
    };

    let ItemFn { attrs, vis, sig, block } = func;
    let cache_ident = format_ident!("__strata_cache", span = Span::mixed_site());
    let key = format_ident!("__strata_key", span = Span::mixed_site());
    let ttl_ident = format_ident!("__strata_ttl", span = Span::mixed_site());
    let slot = format_ident!("__strata_slot", span = Span::mixed_site());
    let slot_ref = format_ident!("__strata_slot_ref", span = Span::mixed_site());
    let result = format_ident!("__strata_result", span = Span::mixed_site());
    let outcome = format_ident!("__strata_outcome", span = Span::mixed_site());
    // Spanned at the return type: the errors about it (not a `Result`, no `From<strata::Error>`,
    // not a cache value) point there, once.
    let (slot_fn, loaded, finish) = (helper("slot"), helper("loaded"), helper("finish"));
    let into_err_fn = helper("into_err");
    let get_or_set = quote_spanned!(ret_span=> #at_ret::Cache::get_or_set);
    let slot_call = quote_spanned!(ret_span=> #slot_fn());
    // The loader's value type is the cached one: its bounds are reported at the return type.
    let loader = quote_spanned! {ret_span=>
        move || async move {
            let #result: #ret = async move #block.await;
            #loaded(#result, #slot_ref)
        }
    };
    let load = quote_spanned!(ret_span=> #get_or_set(#cache_ident, &#key, #ttl_ident, #loader).await);
    let finish_call = quote_spanned!(ret_span=> #finish(#outcome, #slot, #into_err));
    let body = quote! {
        let #into_err = #into_err_fn;
        #schema
        let #cache_ident: &#krate::Cache = #cache;
        let #key = match #krate::KeySchema::key_for_args(#schema_ident, #namespace, &[#(#parts),*]) {
            ::core::result::Result::Ok(#key) => #key,
            ::core::result::Result::Err(#err) => return #fail_call,
        };
        let #ttl_ident: #krate::Ttl = #ttl;
        let #slot = #slot_call;
        let #slot_ref = &#slot;
        let #outcome = #load;
        #finish_call
    };
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #body
        }
    })
}
