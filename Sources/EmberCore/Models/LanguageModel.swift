/// A transformer language model loaded from a GGUF file, its weights read in place: the file
/// and the architecture that reads it.
final class LanguageModel: Sendable {
    let file: GGUFFile
    let architecture: any Architecture

    init(file: GGUFFile) throws {
        self.file = file
        architecture = try Architectures.load(file)
    }

    convenience init(path: String) throws {
        try self.init(file: try GGUFFile(path: path))
    }

    var config: ModelConfig { architecture.config }
    var layerCount: Int { config.layerCount }

    /// The distinct ropes of the model's layers (the angles a batch needs).
    var ropes: [Rope] {
        var found: [Rope] = []
        for l in 0..<layerCount {
            if let rope = architecture.attention(l).rope, !found.contains(rope) { found.append(rope) }
        }
        return found
    }

    /// Bytes of weights read to decode one token: every layer's matrices and the output head
    /// (the embedding lookup reads one row only).
    var bytesPerToken: Int {
        let a = architecture
        var total = a.head.output.weight.byteCount + a.embedding.tokens.rowBytes
        for l in 0..<layerCount { total += a.attention(l).byteCount + a.feedForward(l).byteCount }
        return total
    }

    /// Which positions of a forward call need logits.
    enum LogitRows: Equatable {
        case none
        case last
        case all
    }

    /// Runs `tokens` after the positions already in the pass's cache (in batches of
    /// `pass.maxTokens`) and appends them to it. Logits go to `output`: one row for `.last`,
    /// one per token for `.all` (its row count must cover the tokens).
    func forward(_ tokens: ArraySlice<Int32>, pass: ForwardPass, logits: LogitRows = .last, into output: Matrix? = nil) throws {
        for token in tokens where token < 0 || Int(token) >= config.vocabularySize {
            throw ModelError.invalidToken(id: Int(token), vocabularySize: config.vocabularySize)
        }
        let cache = pass.cache
        guard cache.count + tokens.count <= cache.capacity else {
            throw ModelError.contextOverflow(needed: cache.count + tokens.count, context: cache.capacity)
        }
        precondition(logits == .none || output != nil, "logits requested without an output matrix")
        let a = architecture
        var done = 0
        while done < tokens.count {
            let count = min(pass.maxTokens, tokens.count - done)
            let start = tokens.startIndex + done
            pass.begin(tokens: tokens[start..<start + count], embedding: a.embedding)
            for l in 0..<layerCount { a.block(l, pass) }
            cache.count += count
            switch logits {
            case .none:
                break
            case .last where done + count == tokens.count:
                pass.outputHead(a.head, rows: (count - 1)..<count, into: output!)
            case .last:
                break
            case .all:
                pass.outputHead(a.head, rows: 0..<count, into: Matrix(rowsOf: output!, done..<done + count))
            }
            done += count
        }
    }

    /// Runs one batch of rows from several sequences (at most `pass.maxTokens`): each row's
    /// sequence must hold every position before the row's (earlier rows of the batch count).
    /// Each cache then holds up to its last row; the logits after rows `logitRows` go to
    /// `output` rows 0..., in that order.
    func forward(batch rows: [BatchRow], pass: ForwardPass, logitRows: [Int], into output: Matrix) throws {
        for row in rows where row.token < 0 || Int(row.token) >= config.vocabularySize {
            throw ModelError.invalidToken(id: Int(row.token), vocabularySize: config.vocabularySize)
        }
        for row in rows where row.position >= row.cache.capacity {
            throw ModelError.contextOverflow(needed: row.position + 1, context: row.cache.capacity)
        }
        precondition(output.rows >= logitRows.count && output.length == config.vocabularySize)
        let a = architecture
        pass.begin(rows: rows, embedding: a.embedding)
        for l in 0..<layerCount { a.block(l, pass) }
        for row in rows { row.cache.count = max(row.cache.count, row.position + 1) }
        if !logitRows.isEmpty { pass.outputHead(a.head, rows: logitRows, into: output) }
    }
}
