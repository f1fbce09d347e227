import EmberCore


/// Opens a predictor file (Ember's, or PowerInfer's fc1/fc2 tensors) for `--sparsity predictor`
/// and checks it fits the model.
func loadPredictor(_ path: String, model: LanguageModel) throws -> ActiveNeuronPredictor {
    let predictor = try PredictorSet(path: path)
    let config = model.config
    guard predictor.layers.count == config.layerCount, predictor.inputLength == config.embeddingLength,
          predictor.neuronCount == config.feedForwardLength else {
        throw SparseExecutionError.statisticsMismatch(
            "\(path) predicts \(predictor.layers.count) layers of \(predictor.neuronCount) neurons from \(predictor.inputLength) inputs; "
                + "the model has \(config.layerCount) layers of \(config.feedForwardLength) neurons and \(config.embeddingLength) inputs")
    }
    return predictor
}
