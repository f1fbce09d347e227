import EmberCore
import Foundation
let model = try LanguageModel(path: CommandLine.arguments[1])
let pool = ThreadPool(threads: 2)
let cache = KVCache(config: model.config, capacity: 512)
let pass = ForwardPass(config: model.config, pool: pool, maxTokens: 64, contextCapacity: 512)
let logits = Matrix(rows: 1, length: model.config.vocabularySize)
var tokens: [Int32] = CommandLine.arguments[2].split(separator: ",").map { Int32($0)! }
var out: [Int32] = []
let t0 = Date()
try model.forward(tokens[...], cache: cache, pass: pass, logits: .last, into: logits)
for _ in 0..<Int(CommandLine.arguments[3])! {
    var best = 0
    for i in 0..<model.config.vocabularySize where logits.pointer[i] > logits.pointer[best] { best = i }
    out.append(Int32(best))
    try model.forward([Int32(best)][...], cache: cache, pass: pass, logits: .last, into: logits)
}
print(out, Date().timeIntervalSince(t0))
