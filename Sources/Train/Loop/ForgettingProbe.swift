// ForgettingProbe: the fixed general-text set whose loss tells whether a new adapter version has forgotten what the
// base model could do (continual learning's evaluation gate, LEARNING-DECISIONS #10). The passages are plain,
// everyday prose on varied subjects (science, geography, cooking, health, history, arithmetic, programming), written
// for this project so that it can ship them; the set never changes between versions, so probe losses of different
// adapter versions are comparable.
import Foundation
import Runtime

/// The forgetting probe: fixed general-text passages, scored as plain text (BOS + the passage's tokens, every token
/// after BOS scored).
public enum ForgettingProbe {
    /// Identifier of the passage set; changes whenever the passages change (so stored gate numbers name their set).
    public static let setID = "general-v1"

    /// The passages, one per entry (≈ 30 words each).
    public static let passages: [String] = [
        "Water boils at 100 degrees Celsius at sea level, but the boiling point drops as altitude rises because the air pressure is lower. On a high mountain, pasta takes longer to cook since the water never gets as hot.",
        "The heart pumps blood through two circuits. The right side sends blood to the lungs to pick up oxygen, and the left side pushes the oxygen-rich blood out to the rest of the body through the aorta.",
        "A prime number has exactly two divisors, one and itself. The first few primes are 2, 3, 5, 7, 11 and 13. Every whole number greater than one can be written as a product of primes in only one way.",
        "Photosynthesis lets plants turn light, water and carbon dioxide into sugar and oxygen. The green pigment chlorophyll absorbs red and blue light and reflects green, which is why leaves look green.",
        "The Pacific is the largest and deepest of the world's oceans. It covers about a third of the planet's surface and stretches from the Arctic in the north to the Southern Ocean around Antarctica.",
        "To make a simple vinaigrette, whisk three parts oil with one part vinegar, add a pinch of salt and a little mustard to help the two stay mixed, and taste before pouring it over the salad.",
        "A function in a program is a named block of code that takes inputs, does some work and returns a result. Breaking a long program into small functions makes it easier to read, test and change.",
        "The Moon has no light of its own; it reflects sunlight. Its phases change over about 29 days as we see more or less of the half that faces the Sun.",
        "Rivers carry sand and mud downstream. Where a river slows as it meets the sea, it drops this sediment and can build a delta, a wide flat area of land split into many channels.",
        "Exercise strengthens the heart and muscles. Adults are often advised to be active for at least 150 minutes a week, for example by walking briskly for half an hour on five days.",
        "Sound travels as a wave of pressure through air, water or solids. It moves faster in water than in air, and it cannot travel through the vacuum of space at all.",
        "The printing press made books far cheaper to produce. As more people could afford to read, ideas spread faster across Europe, and literacy grew over the following centuries.",
        "An atom has a small, dense nucleus of protons and neutrons, surrounded by electrons. The number of protons decides which element the atom is: carbon has six, oxygen has eight.",
        "When you save money in an account that pays interest, the interest is added to your balance, and later interest is paid on that larger balance too. This is called compound interest.",
        "Bees visit flowers to collect nectar and pollen. As they move from one flower to the next, they carry pollen with them, which helps many plants make seeds and fruit.",
        "The equator is an imaginary line around the middle of the Earth, halfway between the North and South Poles. Places near it are warm all year and have days and nights of nearly equal length.",
        "A good night's sleep helps memory. During sleep the brain sorts and stores what was learned during the day, which is why studying late into the night can be less useful than resting.",
        "Glass is made by melting sand with soda and lime at a very high temperature and then cooling it quickly, so that the atoms have no time to line up into crystals.",
        "In a democracy, citizens choose their leaders by voting in elections held at regular intervals. Many countries also separate the powers that make laws, carry them out and judge disputes.",
        "Volcanoes form where molten rock from deep inside the Earth reaches the surface. Some erupt explosively and throw ash high into the sky, while others release slow rivers of lava.",
        "A recipe for bread needs only flour, water, salt and yeast. The yeast feeds on sugars in the dough and makes gas, which forms bubbles and makes the loaf rise before it is baked.",
        "The speed of light in empty space is about 300,000 kilometres per second. Light from the Sun takes a little over eight minutes to reach the Earth.",
        "Maps use a scale to show how distances on paper relate to real distances. On a map with a scale of one to fifty thousand, one centimetre stands for half a kilometre on the ground.",
        "Vaccines train the immune system by showing it a harmless piece or weakened form of a germ, so that the body can respond quickly if it meets the real germ later.",
        "Recycling paper saves trees and energy. Used paper is mixed with water into a pulp, cleaned of ink and glue, and then pressed and dried into new sheets.",
        "The Great Wall of China was built and rebuilt over many centuries to protect against invasions from the north. It is not one single wall but a series of walls and forts.",
        "An average is found by adding a set of numbers and dividing by how many there are. The average of 4, 8 and 12 is 8, because their sum is 24 and there are three numbers.",
        "Wind is air moving from areas of high pressure to areas of low pressure. The uneven heating of the Earth's surface by the Sun creates these differences in pressure.",
        "Reading aloud to young children builds their vocabulary. Hearing new words in a story, and talking about the pictures, helps them learn how language works long before they read alone.",
        "Electric current is the flow of charge through a conductor such as a copper wire. A battery provides the push, called voltage, and the resistance of the circuit limits how much current flows."
    ]

    /// The probe as training sequences: `[BOS] + encode(passage)`, `labels_mask` 1 everywhere but position 0.
    /// Passages longer than `maxLength` tokens are cut to it.
    /// - Parameters: tokenizer: the base model's tokenizer; maxLength: ≥ 2 tokens per sequence.
    public static func sequences(tokenizer: Tokenizer, maxLength: Int = 128) -> [TrainingSequence] {
        passages.map { text in
            let ids = Array(tokenizer.encode(text, addBOS: true, parseSpecial: false).prefix(max(2, maxLength)))
            return TrainingSequence(inputIds: ids, labelsMask: [0] + [UInt8](repeating: 1, count: ids.count - 1))
        }
    }
}
