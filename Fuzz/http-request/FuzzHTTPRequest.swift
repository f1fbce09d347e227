// libFuzzer entry for the HTTP request parser (Sources/EmberServer/HTTP/HTTPRequestParser.swift,
// compiled into the same module by ./run). Each input is fed to the parser twice: whole, and in
// pieces whose sizes come from the input itself. The two must agree (same requests, or an error
// with the same status), and every request must be consistent with its own head. Any
// disagreement traps, which libFuzzer reports as a crash with the input saved.

private let limits = HTTPLimits(maxHeaderBytes: 512, maxHeaderFields: 16, maxBodyBytes: 256)

private enum Outcome: Equatable {
    case requests([HTTPRequest], buffered: Int)
    case failed([HTTPRequest], status: Int)
}

private func parse(_ pieces: [ArraySlice<UInt8>]) -> Outcome {
    var parser = HTTPRequestParser(limits: limits)
    var requests: [HTTPRequest] = []
    do {
        for piece in pieces {
            parser.append(piece)
            while let request = try parser.nextRequest() {
                check(request)
                requests.append(request)
            }
            // Never more buffered than one request's head and body (plus the piece just read).
            precondition(parser.bufferedByteCount <= limits.maxHeaderBytes + limits.maxBodyBytes + piece.count)
        }
        return .requests(requests, buffered: parser.bufferedByteCount)
    } catch {
        precondition([400, 411, 413, 431, 505].contains(error.statusCode))
        return .failed(requests, status: error.statusCode)
    }
}

private func check(_ request: HTTPRequest) {
    precondition(!request.method.isEmpty)
    precondition(request.target.hasPrefix("/") || request.target == "*")
    precondition(request.body.count <= limits.maxBodyBytes)
    precondition(request.body.count == Int(request.headers["content-length"] ?? "0"))
    precondition(request.headers.fields.count <= limits.maxHeaderFields)
    precondition(request.headers.values("transfer-encoding").isEmpty)
    if request.version == .http1_1 { precondition(request.headers.values("host").count == 1) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let whole = parse([bytes[...]])
    var pieces: [ArraySlice<UInt8>] = []
    var start = 0
    var step = 0
    while start < bytes.count {
        // Piece sizes 1...16 from the input's own bytes, so the fuzzer explores splits too.
        let length = 1 + Int(bytes[step % bytes.count] % 16)
        step += 1
        let end = min(bytes.count, start + length)
        pieces.append(bytes[start..<end])
        start = end
    }
    precondition(parse(pieces) == whole, "parsing in pieces disagrees with parsing whole")
    return 0
}
