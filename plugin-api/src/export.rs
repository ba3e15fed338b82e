//! The `export_plugin!` macro.

/// Export a plugin library's components. Use it once per library, at the crate root.
///
/// ```ignore
/// fusion_plugin_api::export_plugin! {
///     algorithm MyAlgorithm {
///         names: ["my_algorithm", "my_package.MyAlgorithm"],
///         description: "What it does, in one line.",
///     }
///     modelpool MyPool { names: ["my_pool"], description: "..." }
///     taskpool MyTasks { names: ["my_tasks"], description: "..." }
/// }
/// ```
///
/// Each type implements [`FromConfig`](crate::FromConfig) and the trait of its kind
/// ([`Algorithm`](crate::Algorithm), [`ModelPool`](crate::ModelPool) or
/// [`TaskPool`](crate::TaskPool)). The first name is the short one (`method: my_algorithm` or
/// `_target_: my_algorithm`); list FusionBench class paths after it where you mirror a
/// FusionBench component.
///
/// Under the hood this exports the abi_stable root module (a static named as abi_stable expects,
/// so your crate does not need abi_stable as a dependency), records the plugin's crate name and
/// version, and wires its logs and panics to the host.
#[macro_export]
macro_rules! export_plugin {
    ( $( $kind:ident $ty:ty { names: [ $($name:expr),+ $(,)? ], description: $desc:expr $(,)? } )* ) => {
        // The symbol abi_stable 0.11 looks up (`abi_stable::library::ROOT_MODULE_LOADER_NAME`);
        // plugin-api's tests check that the two stay equal.
        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub static _1as_0lib_1header_0root_bmodule_bloader:
            $crate::__private::abi_stable::library::LibHeader = {
            extern "C" fn __fusion_erased_module()
                -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(
                    __fusion_root_module,
                )
            }
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::abi::PluginModule_Ref,
                >(
                    __fusion_erased_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };

        // The host's Hugging Face hub comes in through this (see `abi::HubExport`).
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        pub static fusion_plugin_hub_v1: $crate::abi::HubExport = $crate::abi::hub_export();

        // How the host runs the algorithms for several models (see `abi::ModelsExport`).
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        pub static fusion_plugin_models_v1: $crate::abi::ModelsExport =
            $crate::abi::models_export(__fusion_models_constructors);

        extern "C" fn __fusion_models_constructors() -> $crate::__private::RVec<
            $crate::__private::abi_stable::std_types::ROption<$crate::abi::ModelsConstructor>,
        > {
            ::std::vec![
                $( $crate::abi::models_constructor::$kind::<$ty>() ),*
            ].into()
        }

        fn __fusion_root_module() -> $crate::abi::PluginModule_Ref {
            $crate::abi::build_module(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                __fusion_init,
                __fusion_components,
            )
        }

        extern "C" fn __fusion_init(link: $crate::abi::HostLink) {
            $crate::abi::plugin_init(env!("CARGO_PKG_NAME"), link)
        }

        extern "C" fn __fusion_components()
            -> $crate::__private::RVec<$crate::abi::ComponentDescriptor> {
            ::std::vec![
                $( $crate::abi::$kind::<$ty>(&[$($name),+], $desc) ),*
            ].into()
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn hub_export_symbol_matches_the_macro() {
        assert_eq!(crate::abi::HUB_EXPORT_SYMBOL, "fusion_plugin_hub_v1");
    }

    #[test]
    fn models_export_symbol_matches_the_macro() {
        assert_eq!(crate::abi::MODELS_EXPORT_SYMBOL, "fusion_plugin_models_v1");
    }

    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
