import Foundation

/// An SVG chart of sorted activation frequencies: per layer, neurons ranked hottest first
/// (x = rank as a share of the layer, 0–100 %) against how often each fires (y = share of
/// tokens). A steep early drop means strong locality; a flat curve means none.
public enum FrequencyPlot {
    /// Points per curve at most: a few hundred are indistinguishable from thousands on screen
    /// and keep the file small.
    static let maximumPoints = 256

    public static func svg(_ statistics: ActivationStatistics, targetIndex: Int, title: String) -> String {
        let width = 900.0, height = 580.0
        let left = 80.0, top = 64.0, plotWidth = 620.0, plotHeight = 440.0
        let target = statistics.sparsityTargets[targetIndex]
        let tokens = max(statistics.tokens, 1)
        func px(_ share: Double) -> Double { left + share * plotWidth }
        func py(_ frequency: Double) -> Double { top + (1 - frequency) * plotHeight }
        func number(_ v: Double) -> String { String(format: "%.1f", v) }

        var svg = """
        <?xml version="1.0" encoding="UTF-8"?>
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
        <rect x="0" y="0" width="\(Int(width))" height="\(Int(height))" fill="white"/>
        <text x="\(number(width / 2))" y="26" text-anchor="middle" font-size="16" font-weight="bold">\(escaped(title))</text>
        <text x="\(number(width / 2))" y="46" text-anchor="middle" fill="#444">\(statistics.tokens) tokens, target sparsity \(String(format: "%.0f", target * 100)) %, \(statistics.layers.count) layers × \(statistics.feedForwardLength) neurons</text>

        """
        // Grid, ticks and labels every 20 %.
        for step in 0...5 {
            let v = Double(step) / 5
            svg += "<line x1=\"\(number(px(v)))\" y1=\"\(number(top))\" x2=\"\(number(px(v)))\" y2=\"\(number(top + plotHeight))\" stroke=\"#e4e4e4\"/>\n"
            svg += "<line x1=\"\(number(left))\" y1=\"\(number(py(v)))\" x2=\"\(number(left + plotWidth))\" y2=\"\(number(py(v)))\" stroke=\"#e4e4e4\"/>\n"
            svg += "<line x1=\"\(number(px(v)))\" y1=\"\(number(top + plotHeight))\" x2=\"\(number(px(v)))\" y2=\"\(number(top + plotHeight + 5))\" stroke=\"black\"/>\n"
            svg += "<text x=\"\(number(px(v)))\" y=\"\(number(top + plotHeight + 19))\" text-anchor=\"middle\">\(step * 20) %</text>\n"
            svg += "<line x1=\"\(number(left - 5))\" y1=\"\(number(py(v)))\" x2=\"\(number(left))\" y2=\"\(number(py(v)))\" stroke=\"black\"/>\n"
            svg += "<text x=\"\(number(left - 8))\" y=\"\(number(py(v) + 4))\" text-anchor=\"end\">\(step * 20) %</text>\n"
        }
        svg += "<rect x=\"\(number(left))\" y=\"\(number(top))\" width=\"\(number(plotWidth))\" height=\"\(number(plotHeight))\" fill=\"none\" stroke=\"black\"/>\n"
        svg += "<text x=\"\(number(left + plotWidth / 2))\" y=\"\(number(top + plotHeight + 40))\" text-anchor=\"middle\">neuron rank within its layer, hottest first (share of neurons)</text>\n"
        svg += "<text transform=\"translate(\(number(left - 50)) \(number(top + plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\">activation frequency (share of tokens)</text>\n"

        // The mean frequency every layer has at the target: 1 − S.
        let mean = py(1 - Double(target))
        svg += "<line x1=\"\(number(left))\" y1=\"\(number(mean))\" x2=\"\(number(left + plotWidth))\" y2=\"\(number(mean))\" stroke=\"#888\" stroke-dasharray=\"6 4\"/>\n"
        svg += "<text x=\"\(number(left + plotWidth - 4))\" y=\"\(number(mean - 5))\" text-anchor=\"end\" fill=\"#666\">mean = 1 − sparsity</text>\n"

        let layerCount = statistics.layers.count
        for (l, layer) in statistics.layers.enumerated() {
            let sorted = layer.counts[targetIndex].sorted(by: >)
            let n = sorted.count
            let points = min(n, maximumPoints)
            let path = (0..<points).map { p -> String in
                let rank = points > 1 ? p * (n - 1) / (points - 1) : 0
                let share = n > 1 ? Double(rank) / Double(n - 1) : 0
                let frequency = min(1, Double(sorted[rank]) / Double(tokens))
                return number(px(share)) + "," + number(py(frequency))
            }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"\(colour(l, of: layerCount))\" stroke-width=\"1.3\" points=\"\(path)\"><title>layer \(l)</title></polyline>\n"
        }

        // Legend: a swatch per layer, labelled sparsely when there are many.
        let legendX = left + plotWidth + 30
        let rowHeight = min(16.0, plotHeight / Double(max(layerCount, 1)))
        let labelEvery = max(1, Int((14 / rowHeight).rounded(.up)))
        svg += "<text x=\"\(number(legendX))\" y=\"\(number(top - 6))\" font-weight=\"bold\">layer</text>\n"
        for l in 0..<layerCount {
            let y = top + Double(l) * rowHeight
            svg += "<rect x=\"\(number(legendX))\" y=\"\(number(y))\" width=\"22\" height=\"\(number(max(rowHeight - 2, 1)))\" fill=\"\(colour(l, of: layerCount))\"/>\n"
            if l % labelEvery == 0 || l == layerCount - 1 {
                svg += "<text x=\"\(number(legendX + 28))\" y=\"\(number(y + rowHeight / 2 + 4))\">\(l)</text>\n"
            }
        }
        svg += "</svg>\n"
        return svg
    }

    /// Writes the chart to `path` through a temporary file and a rename, so a reader never
    /// sees half a file.
    public static func write(_ statistics: ActivationStatistics, targetIndex: Int, title: String, to path: String) throws {
        let temporary = path + ".tmp-\(ProcessInfo.processInfo.processIdentifier)"
        do {
            try Data(svg(statistics, targetIndex: targetIndex, title: title).utf8).write(to: URL(fileURLWithPath: temporary))
            guard rename(temporary, path) == 0 else {
                throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path,
                                                               NSLocalizedDescriptionKey: "cannot rename into \(path): \(String(cString: strerror(errno)))"])
            }
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
    }

    /// Layer colours from dark violet (first) through teal and green to amber (last): a ramp that keeps
    /// neighbouring layers distinguishable and prints legibly in grey.
    static func colour(_ layer: Int, of count: Int) -> String {
        let stops: [(Double, Double, Double)] = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (222, 172, 0)]
        let t = count > 1 ? Double(layer) / Double(count - 1) : 0
        let position = t * Double(stops.count - 1)
        let i = min(Int(position), stops.count - 2)
        let f = position - Double(i)
        let (a, b) = (stops[i], stops[i + 1])
        func mix(_ x: Double, _ y: Double) -> Int { Int((x + (y - x) * f).rounded()) }
        return String(format: "#%02x%02x%02x", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }

    static func escaped(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
