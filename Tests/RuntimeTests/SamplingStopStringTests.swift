// StopStringMatcher tests: hand-worked chunk sequences, plus random chunkings checked against a whole-string search
// done here (first occurrence of any stop, by Unicode scalar offset).

import Runtime
import Testing

@Suite("Sampling stop strings")
struct SamplingStopStringTests {
    @Test func holdsBackAcrossChunkBoundaries() {
        var m = StopStringMatcher(stops: ["STOP"])
        #expect(m.push("Hel") == ("Hel", false))
        #expect(m.push("lo ST") == ("lo ", false))
        #expect(m.push("OP and more") == ("", true))
        #expect(m.push("ignored") == ("", true))
        #expect(m.finish() == "")
        #expect(m.matchedStop == "STOP")
    }

    @Test func stopInsideOneChunkEmitsTextBefore() {
        var m = StopStringMatcher(stops: ["STOP"])
        #expect(m.push("Hel") == ("Hel", false))
        #expect(m.push("lo STOP") == ("lo ", true))
    }

    @Test func stopSpreadOverManyChunks() {
        var m = StopStringMatcher(stops: ["<end>"])
        var out = ""
        for c in ["a<", "e", "n", "d", ">b"] {
            let r = m.push(c)
            out += r.emit
            if r.stopped { break }
        }
        #expect(out == "a")
        #expect(m.stopped)
    }

    @Test func falseStartIsReleased() {
        var m = StopStringMatcher(stops: ["STOP"])
        #expect(m.push("ST") == ("", false))
        #expect(m.push("ART") == ("START", false))
        #expect(m.push("S") == ("", false))
        #expect(m.finish() == "S")
        #expect(!m.stopped)
    }

    @Test func stopThatStartsInsideAHeldPrefix() {
        // "lo S" begins at the held "l": the first "l" of "Hel" is released, the second one is held.
        var m = StopStringMatcher(stops: ["lo S"])
        #expect(m.push("Hel") == ("He", false))
        #expect(m.push("lo STOP") == ("l", true))
    }

    @Test func earliestOfSeveralStopsWins() {
        var m = StopStringMatcher(stops: ["world", "lo w", "xyz"])
        #expect(m.push("Hello world") == ("Hel", true))
        #expect(m.matchedStop == "lo w")
        var n = StopStringMatcher(stops: ["aab"])
        #expect(n.push("aaaab") == ("aa", true))
    }

    @Test func noStopsPassesEverythingThrough() {
        var m = StopStringMatcher(stops: ["", ""])
        #expect(m.push("abc") == ("abc", false))
        #expect(m.finish() == "")
    }

    @Test func unicodeStops() {
        var m = StopStringMatcher(stops: ["<end_of_turn>", "é!"])
        #expect(m.push("Caf") == ("Caf", false))
        #expect(m.push("é") == ("", false))
        #expect(m.push("!x") == ("", true))
        var k = StopStringMatcher(stops: ["🙂🙃"])
        #expect(k.push("a🙂") == ("a", false))
        #expect(k.push("b") == ("🙂b", false))
    }

    @Test func randomChunkingsAgreeWithWholeStringSearch() {
        var rng = SamplingInputRNG(77)
        let alphabet = Array("ab STOP<>é".unicodeScalars)
        let stops = ["STOP", "a<b", "bb b", "é>"]
        let stopScalars = stops.map { Array($0.unicodeScalars) }
        for _ in 0..<300 {
            let length = Int(rng.next() % 60)
            let text = (0..<length).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            // Reference: earliest start of any stop over the whole text.
            var first: Int? = nil
            for s in stopScalars where s.count <= text.count {
                for i in 0...(text.count - s.count) where Array(text[i..<(i + s.count)]) == s {
                    if first == nil || i < first! { first = i }
                    break
                }
            }
            var m = StopStringMatcher(stops: stops)
            var out = ""
            var stopped = false
            var i = 0
            while i < text.count && !stopped {
                let n = 1 + Int(rng.next() % 6)
                var chunk = String.UnicodeScalarView()
                chunk.append(contentsOf: text[i..<min(i + n, text.count)])
                let r = m.push(String(chunk))
                out += r.emit
                stopped = r.stopped
                i += n
            }
            if !stopped { out += m.finish() }
            var expected = String.UnicodeScalarView()
            expected.append(contentsOf: text[..<(first ?? text.count)])
            #expect(stopped == (first != nil))
            #expect(out == String(expected))
        }
    }
}
