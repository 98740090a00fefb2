"""Optional integrations with training frameworks; each module imports its framework, so
import only the one you use: `fastis.integrations.lightning`, `fastis.integrations.transformers`."""
