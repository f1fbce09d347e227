import EmberCore

/// Opens a predictor file for `--sparsity predictor`.
func loadPredictor(_ path: String, model: LanguageModel) throws -> ActiveNeuronPredictor {
    throw UsageError("predictors are not supported by this build yet")
}
