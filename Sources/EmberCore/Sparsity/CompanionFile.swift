/// The files the sparse engine keeps beside a model, named after it: MODEL.gguf → MODEL.stats.gguf,
/// MODEL.predictor.gguf, MODEL.placement.gguf. Runs look for them there by default.
public enum CompanionFile: String, Sendable {
    /// Activation statistics (`ember profile`).
    case statistics = "stats"
    /// Trained predictors (`ember train-predictor`).
    case predictor
    /// A device placement (`ember place`).
    case placement

    /// This companion's path beside the model at `modelPath`.
    public func path(besideModel modelPath: String) -> String {
        (modelPath.hasSuffix(".gguf") ? String(modelPath.dropLast(5)) : modelPath) + "." + rawValue + ".gguf"
    }

    /// Where PowerInfer keeps the placement it generated for a model: the model's path plus
    /// `.generated.gpuidx` (its llama.cpp, snapshot d3ebd7c).
    public static func powerInferPlacement(besideModel modelPath: String) -> String {
        modelPath + ".generated.gpuidx"
    }
}
