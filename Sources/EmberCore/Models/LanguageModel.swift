/// A transformer language model loaded from a GGUF file, its weights read in place.
public final class LanguageModel: @unchecked Sendable {
    public let file: GGUFFile
    public let config: ModelConfig
    public let weights: ModelWeights

    public init(file: GGUFFile) throws {
        self.file = file
        config = try ModelConfig(file: file)
        weights = try ModelWeights(file: file, config: config)
    }

    public convenience init(path: String) throws {
        try self.init(file: try GGUFFile(path: path))
    }

    /// Which positions of a forward call need logits.
    public enum LogitRows: Sendable {
        case none
        case last
        case all
    }

    /// Runs `tokens` after the positions already in `cache` (in batches of `pass.maxTokens`)
    /// and appends them to it. Logits go to `logits`: one row for `.last`, one per token for
    /// `.all` (its row count must cover the tokens).
    public func forward(_ tokens: ArraySlice<Int32>, cache: KVCache, pass: ForwardPass,
                        logits: LogitRows = .last, into output: Matrix? = nil) throws {
        for token in tokens where token < 0 || Int(token) >= config.vocabularySize {
            throw ModelError.invalidToken(id: Int(token), vocabularySize: config.vocabularySize)
        }
        guard cache.count + tokens.count <= cache.capacity else {
            throw ModelError.contextOverflow(needed: cache.count + tokens.count, context: cache.capacity)
        }
        precondition(logits == .none || output != nil, "logits requested without an output matrix")
        var done = 0
        while done < tokens.count {
            let count = min(pass.maxTokens, tokens.count - done)
            let start = tokens.startIndex + done
            pass.begin(tokens: tokens[start..<start + count], start: cache.count, embedding: weights.tokenEmbedding)
            for (l, layer) in weights.layers.enumerated() {
                switch config.family {
                case .llama, .qwen2: Llama.block(layer, layer: l, pass: pass, cache: cache)
                case .gemma3: Gemma3.block(layer, layer: l, pass: pass, cache: cache)
                }
            }
            cache.count += count
            switch logits {
            case .none:
                break
            case .last where done + count == tokens.count:
                outputHead(rows: (count - 1)..<count, pass: pass, into: output!)
            case .last:
                break
            case .all:
                outputHead(rows: 0..<count, pass: pass, into: Matrix(rowsOf: output!, done..<done + count))
            }
            done += count
        }
    }

    /// Final norm and output head for the batch rows `rows`, logits to `output` rows 0...
    private func outputHead(rows: Range<Int>, pass: ForwardPass, into output: Matrix) {
        if rows.count == 1, let device = pass.denseOffload, device.outputHead(pass.x.row(rows.lowerBound), into: output.row(0)) {
            return
        }
        for (i, t) in rows.enumerated() {
            VectorKernels.rmsNorm(pass.x.row(t), weight: weights.outputNorm.pointer, epsilon: config.rmsEpsilon,
                                  pass.normed.row(i), config.embeddingLength)
        }
        pass.linear(pass.normed, [(weights.output, output)], count: rows.count)
    }
}

extension LanguageModel.LogitRows: Equatable {}
